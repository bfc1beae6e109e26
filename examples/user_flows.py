"""The three user flows of the reference, against the quickstart node.

Start the node first (`bash scripts/quickstart`), then run `python examples/user_flows.py`.
It uses an account of its own, `flows@lab.org` (created as the admin, from the node's
own machine, if there is none; the README's account is left alone), and then, as that
data scientist:

I.   builds a model layer by layer on the node and trains it with `fit`;
II.  builds a model locally, trains it remotely with `fit` and `progress`, publishes
     the weights and evaluates them locally on the public test split;
III. drives training batch by batch with `step`, then publishes a loss and the weights.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import veil
from veil import demo, nn

DS_EMAIL = "flows@lab.org"
DS_PASSWORD = "flows-password-1"
BUDGET = 30.0


def data_scientist(url: str, admin_password: str) -> veil.Client:
    try:
        return veil.login(DS_EMAIL, DS_PASSWORD, url=url)
    except veil.AuthenticationError:
        admin = veil.login("admin@veil.dev", admin_password, url=url)
        admin.users.create(
            email=DS_EMAIL, password=DS_PASSWORD, name="User flows example", budget=BUDGET
        )
        return veil.login(DS_EMAIL, DS_PASSWORD, url=url)


def flow_one(client: veil.Client) -> None:
    images = client.datasets["BreastCancerDataset"]["train_images"]
    labels = client.datasets["BreastCancerDataset"]["train_labels"]
    model_ptr = nn.Model(to=client)
    model_ptr.add(nn.Convolution(1, (3, 3), input_shape=(None, 3, 50, 50)))
    model_ptr.add(nn.MaxPool((2, 2)))
    model_ptr.add(nn.Convolution(2, (4, 4)))
    model_ptr.add(nn.MaxPool((2, 2)))
    model_ptr.add(nn.Flatten())
    model_ptr.add(nn.Dense(1))
    model_ptr.add(nn.Sigmoid())
    model_ptr = model_ptr.compile(to=client, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adamax())
    model_ptr.fit(images, labels, max_iter=1, validation_split=0.1, batch_size=100)
    public_weights = model_ptr.weights().publish().get()
    print("Flow I: published", {name: w.shape for name, w in public_weights.items()})


def flow_two(client: veil.Client) -> float:
    data = client.datasets["BreastCancerWisconsin"]
    test_x, test_y = demo.public_test_split("BreastCancerWisconsin")
    model = nn.Model()
    model.add(nn.Normalization.adapt(data["features"], epsilon=0.1))  # noised, charged
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    model.summary()
    model_ptr = model.compile(to=client, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adam(lr=0.05))
    print(
        "Quote:",
        model_ptr.quote(
            data["features"], data["labels"], max_iter=15, batch_size=64, target_epsilon=2.5
        ),
    )
    model_ptr.fit(data["features"], data["labels"], max_iter=15, batch_size=64, target_epsilon=2.5)
    print("Progress:", model_ptr.progress())
    published = model_ptr.weights().publish()
    model.set_weights(published.get())
    accuracy = float(np.mean((model.predict(test_x)[:, 0] > 0.5) == test_y))
    print(f"Flow II: {published!r}; accuracy on the public test split: {accuracy:.3f}")
    return accuracy


def flow_three(client: veil.Client) -> None:
    train_x = client.datasets["Digits"]["images"]
    train_y = client.datasets["Digits"]["labels"]
    model = nn.Model()
    model.add(nn.Rescaling(1 / 16, input_shape=(None, 1, 8, 8)))
    model.add(nn.Convolution(4, (3, 3), activation="relu"))
    model.add(nn.Flatten())
    model.add(nn.Dense(10))
    model.add(nn.Softmax())
    model_ptr = model.compile(to=client, loss=nn.CrossEntropy(), optimizer=nn.Adam(lr=0.01))
    batch_size, rows, epochs = 32, train_y.public_shape[0], 1
    losses = []
    for _ in range(epochs):
        for i in range(rows // batch_size):
            begin = i * batch_size
            loss, preds_ptr = model_ptr.step(
                train_x[begin : begin + batch_size],
                train_y[begin : begin + batch_size],
                validation_split=0.1,
                batch_size=100,
            )
            losses.append(loss)
    last_loss = losses[-1].publish(epsilon=0.5).get()
    public_weights = model_ptr.weights().publish().get()
    print(
        f"Flow III: {len(losses)} steps; last held-out loss ~ {last_loss:.3f}; "
        f"{len(public_weights)} weight tensors published"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8081")
    parser.add_argument("--admin-password", default="changethis")
    args = parser.parse_args(argv)
    client = data_scientist(args.url, args.admin_password)
    try:
        flow_one(client)
        flow_two(client)
        flow_three(client)
    except veil.BudgetExceeded as exc:
        sys.exit(
            f"{exc}\nThe example has spent its budget on earlier runs. As the admin, give "
            f"it more: veil users set-budget {DS_EMAIL} {2 * BUDGET:g}"
        )
    print("Budget:", client.privacy_budget)
    print(client.releases)


if __name__ == "__main__":
    main()
