"""Training jobs: what runs and waits (with progress and the model's cart), what ended."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from veil.server.api.deps import SessionDep
from veil.server.services import jobs
from veil.server.services.node import get_node
from veil.server.web.pages import PageRoute, act, render
from veil.server.web.session import FormUser, PageUser

router = APIRouter(prefix="/jobs", route_class=PageRoute, include_in_schema=False)


@router.get("")
def jobs_page(request: Request, session: SessionDep, viewer: PageUser) -> HTMLResponse:
    found = jobs.list_jobs(session, viewer=viewer, delta=get_node(session).delta)
    return render(request, "jobs.html", viewer=viewer, session=session, jobs=found)


@router.post("/{job_id}/cancel")
def cancel(job_id: str, session: SessionDep, viewer: FormUser) -> RedirectResponse:
    def stop() -> str:
        job = jobs.cancel_job(session, viewer=viewer, job_id=job_id)
        if job.cancel_requested:
            return f"Job {job.id[:8]} stops after its current step."
        return f"Job {job.id[:8]} had already ended ({job.status})."

    return act("/jobs", stop)
