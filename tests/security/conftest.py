"""The security checklist runs against the real engine with the integration tests' fixtures."""

from tests.integration.conftest import *  # noqa: F403
from tests.integration.conftest import __all__, pytest_collection_modifyitems  # noqa: F401
