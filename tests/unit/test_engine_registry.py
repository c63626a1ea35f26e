"""The engine interface: a registered engine module is reached by serve.plan / serve.start / doctor with nothing
else changed, and runs through the real process path (spawn, readiness, failure cause, stop of the whole tree)."""
from __future__ import annotations

import psutil
import pytest

import serve
from core.errors import UserError
from core.hardware import detect
from serve import engine, engines
from serve.process import ServerError


@pytest.fixture
def echo(monkeypatch, tmp_path):
    monkeypatch.setitem(engines.REGISTRY, "echo", "tests.unit.echo_engine")
    root = tmp_path / "site"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "models").write_text('{"data": []}')
    return root


def test_a_registered_engine_is_planned_started_and_stopped(echo, tmp_path):
    lp = serve.plan(str(echo), "echo")
    assert lp.engine == "echo" and lp.reason == "--engine echo" and lp.served_name == "site"
    with serve.start(str(echo), "echo", run_dir=tmp_path / "run", progress=False) as srv:
        assert srv.alive() and srv.engine == "echo" and srv.base_url.endswith("/v1")
        assert (tmp_path / "run" / "echo.log").is_file()
        tree = [p.pid for p in srv.processes()]
    assert not srv.alive()
    assert not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert ("echo", None, "test engine") in engine.doctor_rows(detect())


def test_a_registered_engine_that_dies_is_one_line_with_its_cause(echo, tmp_path):
    with pytest.raises(ServerError) as e:  # http.server refuses the flag and exits at once
        serve.start(str(echo), "echo", run_dir=tmp_path / "run", progress=False, extra_args=["--bogus"])
    assert e.value.line().startswith("error: echo server exited (code 2) while starting 'site'"), e.value.line()
    assert "unrecognized arguments: --bogus" in "\n".join(e.value.tail)


def test_an_unregistered_engine_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        serve.plan("tiny-text", "nonesuch")
    assert "unknown engine 'nonesuch'" in e.value.line() and "vllm|llamacpp" in e.value.line()
