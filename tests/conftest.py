import numpy as np
import pytest

from pathsim.cluster import load_cluster


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def uniform_all_to_all(n: int, bytes_per_rank: float) -> np.ndarray:
    """Each rank sends bytes_per_rank / n to every other rank."""
    m = np.full((n, n), bytes_per_rank / n)
    np.fill_diagonal(m, 0.0)
    return m


def cluster_dict(**topology) -> dict:
    """A minimal valid cluster as a dict, with one 'ici' link class (100 GB/s, 1 us) and a 'nic' class."""
    base = load_cluster("tpu-v4-4x4x4").model_dump()
    base["name"] = "test"
    base["links"] = {
        "ici": {"bandwidth": 100e9, "latency": 1e-6, "source": "test"},
        "nic": {"bandwidth": 50e9, "latency": 2e-6, "source": "test"},
        "nvlink": {"bandwidth": 450e9, "latency": 0.5e-6, "source": "test"},
    }
    base["topology"] = topology
    return base


@pytest.fixture
def refused(capsys):
    """Run the CLI and assert it refuses: exit 2, one `pathsim: error:` report, no traceback; returns stderr."""
    from pathsim.cli import main

    def run(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("pathsim: error: ") and "Traceback" not in err
        return err

    return run
