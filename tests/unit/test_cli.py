"""`kubetune validate` / `kubetune crds` / the lazy subcommands: output format and exit codes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from kubetune import cli

from .helpers import EXAMPLES, INVALID, REPO, finetunejob, header, load_all, modelserve

LINE = re.compile(
    r"^(?P<file>[^:]+): (?P<kind>FineTuneJob|ModelServe)/(?P<name>[^:]+): (?P<path>[^:]+): (?P<message>.+)$"
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def write(tmp_path: Path, name: str, *docs) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def test_all_examples_are_valid(capsys):
    code, out, err = run(capsys, "validate", "-f", *map(str, EXAMPLES))
    assert code == 0, out
    assert out == ""
    assert f"{sum(len(load_all(p)) for p in EXAMPLES)} object(s) checked, 0 with problems" in err


def test_folders_are_read_like_kubectl_apply_f(capsys, tmp_path):
    code, _, err = run(capsys, "validate", "-f", str(REPO / "examples"))
    assert code == 0
    assert f"{sum(len(load_all(p)) for p in EXAMPLES)} object(s) checked, 0 with problems" in err
    (tmp_path / "notes.txt").write_text("not a manifest")
    write(tmp_path, "bad.yaml", modelserve("bad", model={}))
    code, out, err = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 1
    assert out.startswith(f"{tmp_path / 'bad.yaml'}: ModelServe/bad: spec.model: set exactly one")
    assert "notes.txt" not in out + err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run(capsys, "validate", "-f", str(empty))
    assert code == 1 and f"{empty}: cannot read" in out


def test_all_invalid_manifests_fail_with_a_line_each(capsys):
    code, out, _ = run(capsys, "validate", "-f", *map(str, INVALID))
    assert code == 1
    files_named = {line.split(":", 1)[0] for line in out.splitlines()}
    assert files_named == {str(p) for p in INVALID}


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_names_its_field(capsys, path):
    expect = header(path)["expect"]
    code, out, _ = run(capsys, "validate", "-f", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines, "no problem reported"
    paths = set()
    for line in lines:
        match = LINE.match(line)
        assert match, f"not FILE: KIND/NAME: PATH: MESSAGE -> {line!r}"
        assert match["file"] == str(path)
        paths.add(match["path"])
        assert len(match["message"]) > 10
    assert expect in paths, f"expected a problem at {expect}, got {sorted(paths)}"


def test_line_format_and_multi_document_files(capsys, tmp_path):
    bad = finetunejob("bad", training={"batchSize": 0})
    good = modelserve("good")
    file = write(tmp_path, "two.yaml", good, bad)
    code, out, err = run(capsys, "validate", "-f", file)
    assert code == 1
    assert out.splitlines() == [
        f"{file}: FineTuneJob/bad: spec.training.batchSize: Input should be greater than or equal to 1 (got 0)"
    ]
    assert "2 object(s) checked, 1 with problems" in err


def test_other_kinds_are_skipped_with_a_note(capsys, tmp_path):
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-token"},
        "stringData": {"HF_TOKEN": "x"},
    }
    file = write(tmp_path, "bundle.yaml", secret, finetunejob("ok"))
    code, out, err = run(capsys, "validate", "-f", file)
    assert code == 0 and out == ""
    assert "skipped Secret hf-token (not a kubetune object)" in err


def test_a_file_without_kubetune_objects_is_an_error(capsys, tmp_path):
    file = write(tmp_path, "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    code, out, _ = run(capsys, "validate", "-f", file)
    assert code == 1
    assert out.strip() == f"{file}: no FineTuneJob or ModelServe in this file"


def test_unparseable_and_missing_files(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: FineTuneJob\nspec: [unclosed\n")
    ok = write(tmp_path, "ok.yaml", finetunejob("ok"))
    code, out, _ = run(capsys, "validate", "-f", str(broken), str(tmp_path / "nope.yaml"), ok)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{broken}: not valid YAML: ") and "line" in lines[0]
    assert lines[1].startswith(f"{tmp_path / 'nope.yaml'}: cannot read: ")
    assert len(lines) == 2  # the valid file adds nothing


def test_wrong_group_version_and_non_mapping_documents(capsys, tmp_path):
    doc = finetunejob("v")
    doc["apiVersion"] = "kubetune.io/v1beta1"
    file = write(tmp_path, "v.yaml", doc, ["a", "list"])
    code, out, _ = run(capsys, "validate", "-f", file)
    assert code == 1
    assert (
        f"{file}: FineTuneJob/v: apiVersion: must be kubetune.io/v1alpha1, not 'kubetune.io/v1beta1'" in out
    )
    assert "not a Kubernetes object" in out


def test_local_flag_accepts_file_uris(capsys, tmp_path):
    file = write(
        tmp_path, "local.yaml", finetunejob("l", dataset={"uri": "file:///data/train.jsonl"}, output={})
    )
    assert run(capsys, "validate", "-f", file)[0] == 1
    assert run(capsys, "validate", "--local", "-f", file)[0] == 0


def test_validate_requires_files(capsys):
    assert run(capsys, "validate")[0] == 2


def test_crds_check_and_write(capsys, tmp_path):
    out_dir = tmp_path / "crds"
    shutil.copytree(REPO / "crds", out_dir)
    docs = ["--docs-dir", str(tmp_path / "docs"), "--chart-dir", ""]
    code, out, err = run(capsys, "crds", "--check", "--output-dir", str(out_dir), *docs)
    assert code == 1 and "api-reference.md: missing" in err
    run(capsys, "crds", "--output-dir", str(out_dir), *docs)
    code, out, _ = run(capsys, "crds", "--check", "--output-dir", str(out_dir), *docs)
    assert code == 0 and "match the models" in out
    reference = tmp_path / "docs" / "api-reference.md"
    reference.write_text(reference.read_text().replace("| `spec.model.uri` |", "| `spec.model.url` |"))
    code, _, err = run(capsys, "crds", "--check", "--output-dir", str(out_dir), *docs)
    assert code == 1 and "api-reference.md: differs from the models" in err
    run(capsys, "crds", "--output-dir", str(out_dir), *docs)
    target = out_dir / "kubetune.io_modelserves.yaml"
    target.write_text(target.read_text().replace("shortNames:\n    - mserve", "shortNames:\n    - ms"))
    code, _, err = run(capsys, "crds", "--check", "--output-dir", str(out_dir), *docs)
    assert code == 1
    assert "kubetune.io_modelserves.yaml: differs from the models" in err and "run `kubetune crds`" in err
    code, out, _ = run(capsys, "crds", "--output-dir", str(out_dir), *docs)
    assert code == 0 and "kubetune.io_modelserves.yaml" in out
    assert run(capsys, "crds", "--check", "--output-dir", str(out_dir), *docs)[0] == 0


def test_train_needs_local(capsys):
    code, _, err = run(capsys, "train", "-f", "x.yaml")
    assert code == 2 and "--local" in err


def test_train_and_operator_call_their_implementations(capsys, monkeypatch, tmp_path):
    """The subcommands hand their arguments to the trainer's run_local and the operator's run_operator."""
    from kubetune import manager
    from kubetune_trainer import local

    calls = {}
    monkeypatch.setattr(
        local,
        "run_local",
        lambda manifest, output, processes: calls.setdefault("train", (manifest, output, processes)) and 7,
    )
    monkeypatch.setattr(
        manager, "run_operator", lambda **kwargs: calls.setdefault("operator", kwargs) and None
    )
    job = write(
        tmp_path, "job.yaml", finetunejob("j", dataset={"uri": "file:///data/train.jsonl"}, output={})
    )
    args = ("train", "-f", job, "--local", "--output", str(tmp_path), "--processes", "2")
    assert run(capsys, *args)[0] == 7
    assert calls["train"] == (job, str(tmp_path), 2)
    no_election = {"leader_elect": None, "leader_election_id": None, "leader_election_namespace": None}
    assert run(capsys, "operator", "-n", "a", "--namespace", "b", "--standalone")[0] == 0
    assert calls["operator"] == {"namespaces": ["a", "b"], "standalone": True, **no_election}
    calls.clear()
    assert run(capsys, "operator", "--all-namespaces")[0] == 0
    assert calls["operator"] == {"namespaces": None, "standalone": False, **no_election}
    calls.clear()
    argv = (
        "operator",
        "-A",
        "--leader-elect",
        "--leader-election-id",
        "kt",
        "--leader-election-namespace",
        "ops",
    )
    assert run(capsys, *argv)[0] == 0
    assert calls["operator"] == {"namespaces": None, "standalone": False, "leader_elect": True,
                                 "leader_election_id": "kt", "leader_election_namespace": "ops"}  # fmt: skip
    assert run(capsys, "operator", "-A", "-n", "x")[0] == 2


def test_perplexity_without_an_evaluation_set_is_a_warning_and_exit_0(capsys, tmp_path):
    mlm = {"uri": "hf://google-bert/bert-base-uncased", "task": "masked-lm"}
    path = write(
        tmp_path, "mlm.yaml", finetunejob(name="mlm", model=mlm, training={"metrics": ["perplexity"]})
    )
    code, out, err = run(capsys, "validate", "-f", path)
    assert code == 0 and out == ""
    assert (
        f"{path}: FineTuneJob/mlm: warning: spec.training.metrics: perplexity without an evaluation set"
        in err
    )
    held_out = finetunejob(
        name="qa", model={**mlm, "task": "question-answering"}, training={"metrics": ["f1"]}
    )
    code, out, _ = run(capsys, "validate", "-f", write(tmp_path, "qa.yaml", held_out))
    assert code == 1 and "spec.training.metrics: f1 needs held-out data: set dataset.evalSplit" in out


def test_train_reports_an_invalid_manifest_like_validate(capsys, monkeypatch, tmp_path):
    """One line per problem with its field path, as `kubetune validate` prints them; no training starts."""
    from kubetune_trainer import local

    monkeypatch.setattr(
        local, "run_local", lambda *_, **__: pytest.fail("an invalid manifest must not train")
    )
    bad = finetunejob("bad", training={"batchSize": 0, "learningRate": -1}, output={})
    file = write(tmp_path, "bad.yaml", bad)
    code, out, err = run(capsys, "train", "-f", file, "--local")
    assert code == 1 and out == ""
    lines = err.splitlines()
    problems = [line for line in lines if LINE.match(line)]
    assert {LINE.match(line)["path"] for line in problems} == {
        "spec.training.batchSize",
        "spec.training.learningRate",
    }, err
    assert "errors.pydantic.dev" not in err and "validation error" not in err
    assert lines[-1].startswith(f"{file}: fix the problems above")
    code, _, err = run(capsys, "train", "-f", str(tmp_path / "missing.yaml"), "--local")
    assert code == 1 and f"{tmp_path / 'missing.yaml'}: cannot read" in err
