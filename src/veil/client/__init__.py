"""The Python client of a Veil domain node."""

from veil.client._client import Client, login
from veil.client._users import User, UsersAPI

__all__ = ["Client", "User", "UsersAPI", "login"]
