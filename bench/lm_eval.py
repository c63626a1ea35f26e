"""`python -m bench.lm_eval`: EleutherAI's lm-eval against a served OpenAI-compatible endpoint.

Either a server that is already running (`--endpoint URL`, e.g. one `python -m serve --model vl-gptq` started), or
`--model ALIAS`: the server is started the way `python -m bench` starts it (bench.engines, through `serve`), used,
and stopped. lm-eval talks to it through its own API models: `local-completions` (the default: /v1/completions,
log-likelihoods from echo + logprobs, prompts sent as token ids of the model's own tokenizer, read from the model's
local folder) or `local-chat-completions` (`--api chat`: generation tasks only, the server applies the chat template).

Default task: qwen_w4_mc, 48 hand-written 4-choice questions in bench/lm_eval_tasks/ (offline, no Hub); qwen_w4_gen
is a 20-item exact-match generation task beside it. Any of lm-eval's own tasks (`--tasks arc_easy`) works where the
Hub can be reached for its data. Results land in `--out`: results.json, results.md (task, metric, value, stderr, n)
and samples_<task>.jsonl (every item's prompt, responses and scores).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import json
import logging
import os
import shlex
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.cli import add_common
from core.errors import UserError, run_cli

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
DEFAULT_TASKS = "qwen_w4_mc"
APIS = {"completions": "local-completions", "chat": "local-chat-completions"}


def local_tasks() -> list[str]:
    """The tasks in bench/lm_eval_tasks/ (each YAML is named after its task)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def loglikelihood_tasks(names: list[str]) -> list[str]:
    """Those of `names` that are local tasks scored by log-likelihood (their YAML's output_type)."""
    out = []
    for n in names:
        p = TASKS_DIR / f"{n}.yaml"
        if p.is_file() and any(ln.split(":", 1)[-1].strip() in ("multiple_choice", "loglikelihood")
                               for ln in p.read_text().splitlines() if ln.startswith("output_type:")):
            out.append(n)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lm_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="alias / model folder: start its server (as `python -m bench` does), run, stop it")
    p.add_argument("--endpoint", help="a running server instead: its base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--served-model", help="--endpoint: the model name the server serves (default: its only one)")
    p.add_argument("--tokenizer", help="alias or folder of the model's tokenizer (default: the served model's alias "
                                       "or folder); --api completions sends token ids of it")
    p.add_argument("--api-key", help="--endpoint: the server's API key (default $QWEN_W4_API_KEY)")
    p.add_argument("--api", choices=tuple(APIS), default="completions",
                   help="completions: /v1/completions, log-likelihood and generation tasks (default); chat: "
                        "/v1/chat/completions with the server's chat template, generation tasks only")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma-separated lm-eval tasks (default {DEFAULT_TASKS}; local: {', '.join(local_tasks())}; "
                        "lm-eval's own, e.g. arc_easy, need their data from the Hub)")
    p.add_argument("--limit", type=int, help="at most this many items per task (default all)")
    p.add_argument("--num-concurrent", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--out", help="results folder (default reports/lm-eval-<model>-<date-time>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="--model: extra vLLM argument, repeatable (e.g. --server-arg=--max-num-seqs=8)")
    add_common(p)
    return p


# ---------------------------------------------------------------- checks before any server starts

def check_tasks(names: list[str]):
    """lm-eval's TaskManager knowing `names` (with bench/lm_eval_tasks/ on its include path); UserError otherwise.
    Only the local folder is indexed when every name is local (lm-eval's own ~15k task files take seconds)."""
    from lm_eval.tasks import TaskManager

    mine = set(local_tasks())
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=not set(names) <= mine)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], tm.all_tasks, n=3)
        raise UserError(f"unknown lm-eval task '{unknown[0]}'" + (f" (close: {', '.join(close)})" if close else ""),
                        f"use a local task ({', '.join(sorted(mine))}) or one of `lm_eval ls tasks`")
    return tm


def tokenizer_location(name: str) -> str:
    """The folder (or Hub id) of the tokenizer that alias / folder / Hub id `name` names, loaded once to check it."""
    from core import catalog

    loc = catalog.resolve(name).location
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(loc)
    except Exception as e:  # noqa: BLE001 - any load failure is one line: offline Hub id, no tokenizer files ...
        raise UserError(f"cannot load the tokenizer of '{name}' ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                        "pass --tokenizer with the model's local folder or alias") from None
    return loc


# ---------------------------------------------------------------- the server

def _request(url: str, api_key: str | None, body: dict | None = None, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {api_key or 'EMPTY'}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _http_error(e: urllib.error.HTTPError) -> str:
    try:
        err = json.loads(e.read()).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = None
    return f"HTTP {e.code}: {' '.join(str(msg or e.reason).split())[:160]}"


def connect(endpoint: str, served: str | None, api_key: str | None) -> tuple[str, str, dict]:
    """(base URL, served model name, its /v1/models card) of a running server; UserError if it does not answer."""
    from bench.engines.vllm_engine import normalize_endpoint

    base = normalize_endpoint(endpoint)
    try:
        cards = _request(base + "/models", api_key).get("data") or []
    except urllib.error.HTTPError as e:
        raise UserError(f"the endpoint {base} refused /models ({_http_error(e)})",
                        "check --endpoint and --api-key") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise UserError(f"cannot reach the endpoint {base} ({' '.join(str(why).split())[:120]})",
                        "start a server with `python -m serve --model ALIAS`, or check --endpoint") from None
    names = [c.get("id") for c in cards]
    if served is None and len(names) == 1:
        served = names[0]
    if served not in names:
        raise UserError(f"the endpoint {base} serves {', '.join(map(str, names)) or 'no model'}"
                        + (f", not {served}" if served else ""), "pass --served-model with one of those names")
    return base, served, next(c for c in cards if c.get("id") == served)


def check_logprobs(base: str, model: str, api_key: str | None, tokenizer: str) -> None:
    """Log-likelihood tasks need /v1/completions to echo the prompt with a logprob per prompt token (vLLM does;
    llama.cpp's server refuses `echo`): one request says so before lm-eval sends hundreds."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tokenizer)("The sky is blue.", add_special_tokens=False).input_ids
    body = {"model": model, "prompt": ids, "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0}
    todo = ("serve the model with vLLM (`python -m serve --model ALIAS --engine vllm`), or run generation tasks "
            "only with --api chat")
    try:
        r = _request(base + "/completions", api_key, body, timeout=120)
        got = r["choices"][0]["logprobs"]["token_logprobs"]
    except urllib.error.HTTPError as e:
        raise UserError(f"the server gives no prompt logprobs for log-likelihood tasks ({_http_error(e)})", todo) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"the server did not answer a /completions request ({' '.join(str(e).split())[:120]})",
                        "check that it is still running") from None
    except (KeyError, IndexError, TypeError):
        got = None
    if not isinstance(got, list) or len(got) < len(ids):
        raise UserError("the server gives no prompt logprobs for log-likelihood tasks (its /completions reply to "
                        "echo + logprobs has no token_logprobs for the prompt)", todo)


# ---------------------------------------------------------------- results

def rows(out: dict) -> list[dict]:
    """lm-eval's results as {task, metric, value, stderr, n} rows (stderr None where lm-eval has none)."""
    res, n = out.get("results") or {}, out.get("n-samples") or {}
    table = []
    for task, metrics in res.items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric in ("alias", "name", "sample_len") or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            table.append({"task": task, "metric": metric if filt in ("", "none") else f"{metric} ({filt})",
                          "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                          "n": (n.get(task) or {}).get("effective")})
    return table


def markdown(report: dict) -> str:
    s = report["server"]
    lines = [f"# lm-eval: {report['model']}", "",
             (f"{s['served_model']} at {s['base_url']} ({'started for this run' if s['started'] else 'running server'}), "
              f"lm-eval {report['lm_eval_version']} `{report['lm_eval_model']}`, {report['created']}, "
              f"{report['duration_s']:.0f} s"), "",
             "| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for r in report["table"]:
        stderr = f"{r['stderr']:.4f}" if r["stderr"] is not None else ""
        lines.append(f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {stderr} | {r['n'] if r['n'] is not None else ''} |")
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def write(report: dict, samples: dict, out: Path, overwrite: bool) -> None:
    """Everything into a temporary sibling folder, renamed to `out` once complete."""
    from lm_eval.utils import handle_non_serializable

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "results.json").write_text(json.dumps(report, indent=2, default=handle_non_serializable) + "\n")
    (tmp / "results.md").write_text(markdown(report))
    for task, items in samples.items():
        with open(tmp / f"samples_{task}.jsonl", "w") as f:
            f.writelines(json.dumps(item, default=handle_non_serializable) + "\n" for item in items)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    tmp.rename(out)


# ---------------------------------------------------------------- the run

def evaluate(args, tm, base: str, served: str, tokenizer: str | None, max_length: int | None) -> dict:
    """lm-eval's simple_evaluate in this process (its results as a dict, its errors as exceptions: no output files
    to find and parse, as with its CLI in a subprocess)."""
    import lm_eval
    from lm_eval.utils import setup_logging

    setup_logging(logging.INFO if args.debug else logging.WARNING)
    logging.getLogger("lm_eval.api.task").addFilter(lambda r: "Custom kwargs can be passed" not in r.getMessage())
    if args.api == "completions":
        model_args = {"base_url": f"{base}/completions", "model": served, "tokenizer": tokenizer,
                      "tokenizer_backend": "huggingface", "tokenized_requests": True}
        if max_length:
            model_args["max_length"] = max_length
    else:
        model_args = {"base_url": f"{base}/chat/completions", "model": served}
    model_args.update(num_concurrent=args.num_concurrent, max_retries=3, timeout=600)
    try:
        return lm_eval.simple_evaluate(model=APIS[args.api], model_args=model_args, tasks=args.task_list,
                                       limit=args.limit, task_manager=tm, log_samples=True,
                                       apply_chat_template=args.api == "chat")
    except NotImplementedError as e:
        raise UserError(f"--api {args.api} cannot run these tasks ({' '.join(str(e).split())[:120]})",
                        "run log-likelihood (multiple-choice) tasks with --api completions") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.doctor:
        import serve

        return serve.doctor()
    if bool(args.model) == bool(args.endpoint):
        raise UserError("pass --model ALIAS (start its server) or --endpoint URL (a running one), one of the two",
                        "e.g. python -m bench.lm_eval --model tiny-text")
    if args.model and args.served_model:
        raise UserError("--served-model goes with --endpoint", "drop it: --model serves the model under its alias")
    for name, val in (("limit", args.limit), ("num-concurrent", args.num_concurrent)):
        if val is not None and val < 1:
            raise UserError(f"--{name} must be at least 1, got {val}", f"pass a positive --{name}")
    args.task_list = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not args.task_list:
        raise UserError("no tasks given", f"pass --tasks, e.g. --tasks {DEFAULT_TASKS}")
    if args.api == "chat" and loglikelihood_tasks(args.task_list):
        raise UserError(f"{loglikelihood_tasks(args.task_list)[0]} is scored by log-likelihood, which chat completions "
                        "cannot give", "run it with --api completions (the default)")
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("lm-eval is not installed here", "install the bench extra: "
                        "pip install -c constraints.txt -e '.[bench]'")
    if set(args.task_list) <= set(local_tasks()):  # local data only: nothing may reach for the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    label = args.model or args.served_model or "endpoint"
    out = Path(args.out) if args.out else Path("reports") / (
        f"lm-eval-{Path(label).name}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists", "pass another --out, or --overwrite")

    from core import catalog

    started = time.time()
    engine = None
    if args.model:
        r = catalog.resolve(args.model)  # an unknown alias is one line here, before anything starts
        tokenizer = tokenizer_location(args.tokenizer or args.model) if args.api == "completions" else None
    tm = check_tasks(args.task_list)
    try:
        if args.model:
            from bench.engines import make as make_engine

            modality = r.variant.modality if r.variant else (
                "vl" if r.path and "vision_config" in json.loads((r.path / "config.json").read_text()) else "text")
            engine = make_engine("vllm", args.model, r.location, modality, server_args=tuple(args.server_arg))
            engine.debug = args.debug
            print(f"[lm-eval] starting a server for {args.model}", file=sys.stderr, flush=True)
            engine.open()
            base, served, api_key = engine.base_url, engine.model, engine.api_key
            max_length = engine.info.get("context")
            server = {"started": True, **{k: engine.info.get(k) for k in
                                          ("server", "argv", "startup_s", "cpu_int4", "log_path")},
                      "pid": engine.server.pid if engine.server else None}
        else:
            from serve.args import default_api_key

            api_key = args.api_key or default_api_key()
            base, served, card = connect(args.endpoint, args.served_model, api_key)
            max_length = card.get("max_model_len")
            tokenizer = None
            if args.api == "completions":
                tokenizer = tokenizer_location(args.tokenizer or _tokenizer_guess(served, card))
            server = {"started": False}
        server.update(base_url=base, served_model=served, max_model_len=max_length)
        if api_key:
            os.environ["OPENAI_API_KEY"] = api_key  # lm-eval's API models read it; never written to the results
        if args.api == "completions":
            check_logprobs(base, served, api_key, tokenizer)
        print(f"[lm-eval] {', '.join(args.task_list)} on {served} at {base} ({APIS[args.api]})", file=sys.stderr,
              flush=True)
        try:
            res = evaluate(args, tm, base, served, tokenizer, max_length)
        except UserError:
            raise
        except Exception as e:  # a failed run is one line (the server's own reason when it has one), --debug re-raises
            if args.debug:
                raise
            why = engine.failure_reason() if engine is not None else None
            raise UserError(f"lm-eval failed: {why or type(e).__name__ + ': ' + ' '.join(str(e).split())[:200]}",
                            "re-run with --debug for lm-eval's log and the traceback", exit_code=1) from None
    finally:
        if engine is not None:
            print(f"[lm-eval] stopping the server of {args.model}", file=sys.stderr, flush=True)
            engine.close()
    report = {
        "schema": 1,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "command": "python -m bench.lm_eval " + shlex.join(argv),
        "model": args.model or served, "tokenizer": tokenizer, "api": args.api, "lm_eval_model": APIS[args.api],
        "lm_eval_version": __import__("lm_eval").__version__, "server": server,
        "tasks": args.task_list, "limit": args.limit, "num_concurrent": args.num_concurrent,
        "table": rows(res),
        "lm_eval": {k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-samples", "n-shot", "versions",
                                            "higher_is_better", "configs", "config", "date")},
    }
    write(report, res.get("samples") or {}, out, args.overwrite)
    print(markdown(report))
    print(f"results: {out}/results.md")
    return 0


def _tokenizer_guess(served: str, card: dict) -> str:
    """--endpoint without --tokenizer: the served name as an alias / folder, else the folder the server loaded
    (vLLM's /v1/models `root`) where it exists on this machine."""
    from core import catalog

    try:
        r = catalog.resolve(served, build_tiny=False)
    except UserError:
        r = None
    if r is not None and r.source == "local":
        return r.location
    root = card.get("root")
    if root and (Path(root) / "tokenizer_config.json").is_file():
        return root
    if r is not None:
        return r.location  # a Hub id: transformers fetches its tokenizer where the Hub can be reached
    raise UserError(f"no tokenizer for the served model '{served}' on this machine",
                    "pass --tokenizer with the model's alias or local folder")


if __name__ == "__main__":
    run_cli(main)
