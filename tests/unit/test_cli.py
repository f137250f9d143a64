import subprocess
import sys

from worker import __version__


def test_python_m_worker_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "worker", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert __version__ in out.stdout
