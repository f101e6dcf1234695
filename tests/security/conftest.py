import pytest

from tests.sandbox_fixtures import (
    docker_client,
    make_sandbox,
    oi_user,
    session_id,
    shared_site,
    workdir,
)

__all__ = [
    "docker_client",
    "make_sandbox",
    "oi_user",
    "session_id",
    "shared_site",
    "workdir",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.docker)
