"""The CLI of issue 4 (the forms in README.md): import, tags, aliases, templates, every target, tasks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Running, cli, cli_json


def _auth(r: Running) -> list[str]:
    return ["--url", r.url, "--app-key", r.app_key, "--app-secret", r.app_secret]


def test_import_tag_alias_and_every_target_from_the_shell(running: Running, tmp_path: Path) -> None:
    r = running
    fleet = tmp_path / "fleet.jsonl"
    fleet.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"install_id": "a", "platform": "ios", "app_version": "2.1.0", "tags": ["cs"], "alias": "u1"},
                {
                    "install_id": "b",
                    "platform": "android",
                    "app_version": "1.9",
                    "tags": ["cs", "grad"],
                    "alias": "u1",
                },
                {"install_id": "c", "platform": "android", "app_version": "2.0", "test": True},
            ]
        )
        + "\n"
    )
    imported = cli_json("device", "import", str(fleet), "--data-dir", str(r.data_dir), "--app-key", r.app_key)
    assert imported["imported"] == 3
    a, b, c = (d["device_id"] for d in imported["devices"])

    assert cli_json("device", "tag", "add", c, "staff", "cs", *_auth(r))["tags"] == ["cs", "staff"]
    assert cli_json("device", "tag", "remove", c, "cs", *_auth(r))["tags"] == ["staff"]
    assert cli_json("device", "alias", "set", c, "u2", "--alias-type", "user", *_auth(r))["aliases"] == [
        {"alias": "u2", "alias_type": "user"}
    ]
    assert cli_json("device", "show", b, *_auth(r))["tags"] == ["cs", "grad"]
    assert cli_json("device", "update", a, "--test", *_auth(r))["test"] is True

    def reached(result: dict[str, object]) -> set[str]:
        status = cli_json("status", str(result["msg_id"]), *_auth(r))
        return {d["device_id"] for d in status["deliveries"]}

    tagged = cli_json("push", *_auth(r), "--tag-expr", "cs && !grad || staff", "--title", "t", "--wait")
    assert tagged["task"]["state"] == "done" and tagged["task"]["published"] == 2
    assert reached(tagged) == {a, c}
    filtered = cli_json(
        "push",
        *_auth(r),
        "--filter",
        "app_version>=2",
        "--filter",
        "platform=android,ios",
        "--title",
        "t",
        "--wait",
    )
    assert reached(filtered) == {a, c}
    assert reached(cli_json("push", *_auth(r), "--alias", "u1", "--title", "t")) == {a, b}
    assert reached(cli_json("push", *_auth(r), "--broadcast", "--test", "--title", "t", "--wait")) == {a, c}
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{b}\n{c}\n")
    assert reached(cli_json("push", *_auth(r), "--file", str(ids), "--title", "t", "--wait")) == {b, c}

    assert cli_json("template", "set", "hi", "--title", "Hi {{name}}", *_auth(r))["name"] == "hi"
    assert [t["name"] for t in cli_json("template", "list", *_auth(r))["templates"]] == ["hi"]
    single = cli_json("push", *_auth(r), "--device", a, "--template", "hi", "--var", "name=Ann")
    assert reached(single) == {a}
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"device": a, "vars": {"name": "A"}})
        + "\n"
        + json.dumps({"alias": "u2", "vars": {"name": "C"}})
        + "\n"
    )
    batch = cli_json("push", *_auth(r), "--template", "hi", "--vars-file", str(items))
    assert len(batch["msg_ids"]) == 2

    status = cli_json("task", "status", tagged["task_id"], *_auth(r))
    assert {"task_id", "state", "targeted", "published", "forwarded", "arrived", "opened", "failed"} <= set(
        status
    )
    again = cli("task", "cancel", tagged["task_id"], *_auth(r))
    assert again.returncode == 2 and "task_finished" in again.stderr


def test_target_flag_mistakes_exit_2_naming_the_flag(running: Running, tmp_path: Path) -> None:
    r = running
    ((device, _),) = r.register()
    cases = [
        (["push", *_auth(r), "--title", "t"], "exactly one target"),
        (["push", *_auth(r), "--device", device, "--broadcast", "--title", "t"], "exactly one target"),
        (["push", *_auth(r), "--filter", "nonsense", "--title", "t"], "--filter"),
        (["push", *_auth(r), "--filter", "platform>=ios", "--title", "t"], "--filter"),
        (["push", *_auth(r), "--filter", "colour=red", "--title", "t"], "bad_filter"),
        (["push", *_auth(r), "--tag-expr", "a &&", "--title", "t"], "bad_tag_expr"),
        (["push", *_auth(r), "--device", device, "--template", "nope"], "unknown_template"),
        (["push", *_auth(r), "--device", device, "--var", "novalue", "--title", "t"], "--var"),
        (["push", *_auth(r), "--file", str(tmp_path / "missing.txt"), "--title", "t"], "--file"),
        (["task", "status", "tnosuchtask", *_auth(r)], "unknown_task"),
        (["device", "tag", "add", device, "x" * 65, *_auth(r)], "bad_tag"),
    ]
    for args, needle in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_a_bad_import_line_exits_2_naming_the_line_and_imports_nothing(
    running: Running, tmp_path: Path
) -> None:
    r = running
    fleet = tmp_path / "fleet.jsonl"
    fleet.write_text('{"install_id": "a", "platform": "ios"}\n\n{"install_id": "b", "platform": "symbian"}\n')
    proc = cli("device", "import", str(fleet), "--data-dir", str(r.data_dir), "--app-key", r.app_key)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line 3: 'symbian' is not a valid Platform" in proc.stderr
    listed = cli_json("device", "list", "--data-dir", str(r.data_dir), "--app-key", r.app_key)
    assert listed["devices"] == []
