"""The `diffsteer` command line: the Gaussian-mixture job, `diffsteer rewards`, and one-line errors."""

import inspect
import subprocess
import sys

import pytest

from diffsteer.cli import main
from diffsteer.rewards import available


def test_gmm_main_job_prints_target_and_estimate(capsys):
    assert main(["gmm", "--particles", "200", "--steps", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for expected in ("target", "FK", "log Z", "closed form", "cost FK", "best-of-200 picks mode", "200 plain samples"):
        assert expected in out


def test_gmm_with_one_particle_reads_in_the_singular(capsys):
    assert main(["gmm", "--particles", "1", "--steps", "5"]) == 0
    assert "(1 plain sample)" in capsys.readouterr().out


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


@pytest.mark.parametrize(
    "argv, line",
    [
        (["gmm", "--lmbda", "nan"], "diffsteer: error: --lmbda must be a finite number, got nan."),
        (["gmm", "--lmbda=-inf"], "diffsteer: error: --lmbda must be a finite number, got -inf."),
        (
            ["gmm", "--seed", "-1"],
            "diffsteer: error: --seed must be between 0 and 2**64 - 1 = 18446744073709551615 (torch's seed range), "
            "got -1.",
        ),
        (
            ["gmm", "--steps", "x"],
            "diffsteer: error: argument --steps: invalid int value: 'x' (see diffsteer gmm --help)",
        ),
        (["nope"], "diffsteer: error: argument command: invalid choice: 'nope'"),
        ([], "diffsteer: error: the following arguments are required: command (see diffsteer --help)"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, line):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


def test_help_documents_the_cap_the_exit_codes_and_reward_options(capsys):
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--max-particles MAX_PARTICLES the most particles a run may take (default 4096)",
        "values <= 1 turn it off",
        "--reward-option KEY=JSON",
        "pretrained='\"/models/ImageReward.pt\"'",
        "Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted.",
        "swaps it in",
    ):
        assert fragment in text


def test_rewards_lists_the_registry(capsys):
    assert main(["rewards"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "differentiable", "needs", "download", "options"]
    specs = available()
    assert len(lines) == 1 + 3 * len(specs)
    for index, spec in enumerate(specs):
        row, summary, source = lines[1 + 3 * index : 4 + 3 * index]
        options = [name for name in inspect.signature(spec.factory).parameters if name != "self"]
        grad, download = ("yes" if flag else "no" for flag in (spec.differentiable, spec.needs_download))
        assert row.split(maxsplit=3) == [spec.name, grad, download, ", ".join(options)]
        assert summary.strip() == spec.summary and source.strip() == f"weights: {spec.source}"
    eval_row = next(line for line in lines if line.startswith("shapes-eval "))
    assert eval_row.split() == ["shapes-eval", "no", "no", "partial,", "batch_size"]
