"""The `fedvlm` command as a newcomer meets it: --version, an example in every --help,
and --resume that reads the interrupted run's settings instead of asking for them again."""

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cli.main import build_parser
from coordinator.run_folder import saved_run_config
from fedvlm.errors import FedVLMError

FEDVLM = str(Path(sys.executable).parent / "fedvlm")


def test_version_is_the_installed_distribution():
    done = subprocess.run([FEDVLM, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"fedvlm {version('fedvlm')}"


def test_every_subcommand_help_ends_with_an_example_of_itself():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name, command in subparsers.choices.items():
        example = command.format_help().split("example:\n", 1)[1]
        assert example.strip().startswith(f"fedvlm {name} "), name


def test_resume_reads_the_run_config_back_from_the_run_folder(tmp_path):
    run = tmp_path / "deploy-1"
    run.mkdir()
    saved = {"num-server-rounds": 10, "local-steps": 16, "run-name": "deploy-1", "resume": ""}
    (run / "run.json").write_text(json.dumps({"run_id": "deploy-1", "run_config": saved}))
    assert saved_run_config(run) == {k: v for k, v in saved.items() if k != "resume"}
    with pytest.raises(FedVLMError, match=r"--resume: .*run.json does not exist"):
        saved_run_config(tmp_path)


def test_a_node_started_with_relative_credential_paths_passes_absolute_ones(tmp_path, monkeypatch):
    """`fedvlm node --private-key creds/site-0.key` run from the folder that holds `creds/`
    (as the README does): the site worker and the ClientApp run elsewhere, and a relative
    `secagg-identity-key` made every secure-aggregation setup fail with "cannot read
    creds/site-0.key" in a loopback deployment."""
    from cli.deploy import node_settings

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        ["node", "--superlink", "127.0.0.1:9400", "--data", "digits/site-0",
         "--ca-cert", "creds/ca.crt", "--private-key", "creds/site-0.key"]
    )  # fmt: skip
    settings = node_settings(args)
    assert settings["secagg-identity-key"] == str(tmp_path / "creds" / "site-0.key")
    assert settings["secagg-ca-cert"] == str(tmp_path / "creds" / "ca.crt")
    assert settings["site-name"] == "site-0"
