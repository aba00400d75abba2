"""The `diffsteer` command line."""

import subprocess
import sys

from diffsteer.cli import main


def test_gmm_main_job_prints_target_and_estimate(capsys):
    assert main(["gmm", "--particles", "200", "--steps", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for expected in ("target", "FK", "log Z", "closed form", "cost FK", "best-of-200 picks mode"):
        assert expected in out


def test_bad_arguments_give_one_line_and_exit_code_2():
    completed = subprocess.run(
        [sys.executable, "-m", "diffsteer", "gmm", "--potential", "add", "--steps", "2"],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "diffsteer: error: Unknown potential 'add'; choose one of ['diff', 'max', 'sum', 'immediate']."
    ]
