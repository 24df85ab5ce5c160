import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
TOY_EXT = os.path.join(FIXTURES, "toy_ext")
TOY_YAML = os.path.join(FIXTURES, "toy.yaml")


@pytest.fixture(scope="session", autouse=True)
def toy():
    """The test extension (geometry 'toy-field', data 'toy-datamodule', system 'toy-system'), imported the way
    launch.py imports --extensions folders."""
    import sys

    import threestudio

    (name,) = threestudio.load_extensions(TOY_EXT)
    return sys.modules[name]
