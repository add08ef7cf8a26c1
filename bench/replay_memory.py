"""``python -m bench.replay_memory``: replaying a 1,000,000-event log keeps memory flat.

1. Starts a private ``redis-server`` on a free port (temporary directory, no persistence).
2. Generates a realistic pipeline history with the real domain (``decide`` + ``evolve``):
   executions through Source -> Build (3 actions, 2 run orders) -> manual Approval -> Deploy
   (automatic retry), with failed actions, manual retries of both modes, stops. This
   template (``--per-pipeline`` events) is stamped out for many pipelines with their own
   ids, and written straight into the pipelines' streams (pipelined ``XADD``, entry id
   ``<version>-0``, the chained hash computed as the append script does), which is much
   faster than going through the engine and gives byte-identical entries.
3. Runs ``stageline audit replay`` (and ``audit verify``) in a fresh process on the log
   at 100k events and again at 1M events, and reports each process's peak RSS (VmHWM), and
   a sampled run that records the RSS after every 100k events folded.
4. For contrast, replays ONE pipeline whose history is 25k and 100k events long: there
   the state itself (every execution and attempt) grows with the history, as it must.

Not part of the pytest run. ``--events`` and ``--per-pipeline`` change the sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    FailureConditions,
    PipelineDeclaration,
    RetryConfiguration,
    StageDeclaration,
)
from app.domain.state import PipelineState, evolve, new_state
from app.store.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 16
TEMPLATE = "tmplpipe"
ID_STEM = b"00000000-0000-4000-8000-"
COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
APPROVAL = ActionTypeId(category="Approval", owner="AWS", provider="Manual", version="1")


# --- a realistic history from the real domain ------------------------------------------------


def _declaration(name: str) -> PipelineDeclaration:
    def cmd(n: str, order: int = 1) -> ActionDeclaration:
        return ActionDeclaration(
            name=n, actionTypeId=COMMANDS, runOrder=order, commands=["make " + n]
        )

    return PipelineDeclaration(
        name=name,
        roleArn="arn:aws:iam::123456789012:role/stageline",
        stages=[
            StageDeclaration(name="Source", actions=[cmd("src")]),
            StageDeclaration(name="Build", actions=[cmd("b1"), cmd("b2"), cmd("b3", 2)]),
            StageDeclaration(
                name="Approve",
                actions=[ActionDeclaration(name="gate", actionTypeId=APPROVAL, runOrder=1)],
            ),
            StageDeclaration(
                name="Deploy",
                actions=[cmd("d1")],
                onFailure=FailureConditions(
                    result="RETRY",
                    retryConfiguration=RetryConfiguration(retryMode="FAILED_ACTIONS"),
                ),
            ),
        ],
    )


class _History:
    def __init__(self, name: str, seed: int) -> None:
        self.s: PipelineState = new_state(name)
        self.log: list[ev.Envelope] = []
        self.n = 0
        self.now = 1_700_000_000.0
        self.rng = random.Random(seed)

    def new_id(self) -> str:
        self.n += 1
        return f"{ID_STEM.decode()}{self.n:012x}"

    def run(self, cmd: c.Command, actor: str) -> None:
        self.now += self.rng.uniform(0.5, 30.0)
        ctx = Ctx(now=self.now, new_id=self.new_id, actor=actor, requestId=self.new_id())
        for env in decide(self.s, cmd, ctx):
            evolve(self.s, env)
            self.log.append(env)

    def execution(self, k: int) -> None:
        eid = self.new_id()
        self.run(c.StartExecution(executionId=eid, triggerDetail="AKIADEV"), "AKIADEV")
        stop_at = self.rng.randrange(8) if k % 10 == 9 else None
        retries = 0
        for step in range(60):
            x = self.s.executions[eid]
            if step == stop_at and x.status == "InProgress":
                self.run(c.StopExecution(executionId=eid, reason="stopped by ops"), "AKIAOPS")
            stage = x.currentStage or ""
            running = [a for a in x.latest_actions(stage) if a.status == "InProgress"]
            if not running and x.status == "Failed" and retries < 2:
                retries += 1
                mode = "FAILED_ACTIONS" if retries == 1 else "ALL_ACTIONS"
                self.run(c.RetryStage(executionId=eid, stageName=stage, retryMode=mode), "AKIAREL")
                self.run(c.ApplyStageRetry(executionId=eid, stageName=stage), "worker:orch-1")
                continue
            if not running:
                return
            a = running[0]
            if a.kind == "approval":
                assert a.token is not None
                self.run(
                    c.PutApproval(
                        stageName=a.stageName,
                        actionName=a.actionName,
                        token=a.token,
                        status="Approved",
                        summary="ok",
                    ),
                    "AKIAAPPROVER",
                )
                continue
            aid = a.actionExecutionId
            self.run(
                c.StartAction(executionId=eid, actionExecutionId=aid, worker="w-1"), "worker:w-1"
            )
            ok = self.rng.random() > 0.12
            self.run(
                c.CompleteAction(
                    executionId=eid,
                    actionExecutionId=aid,
                    succeeded=ok,
                    worker="w-1",
                    summary="exit 0" if ok else None,
                    errorCode=None if ok else "JobFailed",
                    message=None if ok else "exit status 1: " + "x" * self.rng.randrange(80),
                ),
                "worker:w-1",
            )


def history(name: str, events: int, seed: int = 7) -> list[bytes]:
    """Payloads of a pipeline with at least ``events`` events."""
    h = _History(name, seed)
    h.run(c.CreatePipeline(declaration=_declaration(name)), "AKIAADMIN")
    k = 0
    while len(h.log) < events:
        h.execution(k)
        k += 1
    return [ev.encode_payload(e) for e in h.log[:events]]


def stamp(template: list[bytes], index: int, name: str) -> list[bytes]:
    """The template's payloads with this pipeline's own ids and name."""
    stem = f"{index:08x}-0000-4000-8000-".encode()
    tmpl = f'"name":"{TEMPLATE}"'.encode()
    new = f'"name":"{name}"'.encode()
    return [p.replace(ID_STEM, stem).replace(tmpl, new) for p in template]


# --- writing the log directly -------------------------------------------------------------------


def write_pipeline(r: redis.Redis, keys: Keys, name: str, payloads: list[bytes]) -> None:
    """Layout 2: the pipeline's stream (declarations + head references), one stream per
    execution, per-stream chains, the counter and the derived indexes."""
    prev: dict[str, bytes] = {}
    pipe = r.pipeline(transaction=False)

    def add(key: str, stream: str, fld: str, v: int, body: bytes) -> None:
        seed = prev.get(stream, b"") + b"\n" + str(v).encode() + b"\n" + body
        h = hashlib.sha1(seed).hexdigest().encode()
        pipe.xadd(key, {fld: body, "h": h}, id=f"{v}-0")
        prev[stream] = h

    for v, payload in enumerate(payloads, 1):
        e = ev.decode_payload(name, v, payload).event
        eid = ev.execution_of(e)
        if eid is None:
            add(keys.log(name), "-", "e", v, payload)
        else:
            add(keys.execution_log(name, eid), eid, "e", v, payload)
            if type(e) in ev.HEAD_EVENTS:
                add(keys.log(name), "-", "r", v, ev.encode_ref(ev.head_ref(e)))
            if isinstance(e, ev.ExecutionStarted):
                pipe.zadd(keys.executions(name), {eid: v})
            aid = ev.action_of(e)
            if aid:
                pipe.hset(keys.attempts(name, eid), aid, v)
                if isinstance(e, ev.ActionExecutionScheduled):
                    pipe.zadd(keys.actions(name), {f"{eid}/{aid}": v})
            tok = getattr(e, "clientRequestToken", None)
            if tok:
                pipe.hset(keys.request_tokens(name), tok, eid)
            apv = getattr(e, "token", None)
            if apv:
                pipe.hset(keys.approvals(name), apv, eid)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.set(keys.sequence(name), len(payloads))
    pipe.sadd(keys.names(keys.partition(name)), name)
    pipe.execute()


# --- measuring ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH")
        self.dir = tempfile.mkdtemp(prefix="replay-memory-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def vm_hwm_mib() -> float:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss, which Linux carries over an
    execve from the forking parent, VmHWM belongs to the process image: not inflated by
    the memory this benchmark holds when it starts a child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


MEASURE = r"""
import sys
from app.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:  # --help
    rc = int(e.code or 0)
with open("/proc/self/status") as f:
    hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
with open(sys.argv[1], "w") as f:
    f.write(str(hwm / 1024))
sys.exit(rc)
"""


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """Run ``stageline ARGS`` in a fresh process: its peak RSS (MiB), seconds, stdout."""
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as hwm, tempfile.TemporaryFile() as out:
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, hwm.name, *args],
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{args[:6]} failed ({proc.returncode}): {proc.stderr[-2000:]!r}")
        out.seek(0)
        return float(hwm.read()), time.perf_counter() - t0, out.read().decode()


def replay_cli(url: str, pipeline: str | None = None) -> dict[str, Any]:
    args = [
        "audit",
        "replay",
        "--redis-url",
        url,
        "--partitions",
        str(PARTITIONS),
        "--out",
        os.devnull,
        "--no-progress",
    ]
    if pipeline:
        args += ["--pipeline", pipeline]
    peak, secs, _ = run_measured(args)
    return {"peak_rss_mib": round(peak, 1), "seconds": round(secs, 1)}


SAMPLER = r"""
import anyio, json, sys
from app.audit.replay import replay
from app.store.connection import connect
from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.replay_memory import vm_hwm_mib

every = int(sys.argv[3])

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

class Sampler:
    def __init__(self):
        self.n = 0
        self.samples = []
    def update(self, k):
        before = self.n
        self.n += k
        if self.n // every != before // every:
            self.samples.append([self.n, round(rss_mib(), 1), round(vm_hwm_mib(), 1)])

async def main():
    r = await connect(sys.argv[2])
    store = EventStore(r, Keys(partitions=16))
    s = Sampler()
    async for _ in replay(store, progress=s):
        pass
    print(json.dumps(s.samples))

anyio.run(main)
"""


def sampled(url: str, every: int) -> list[list[float]]:
    """[events folded, RSS now, peak RSS] every ``every`` events of one replay of all."""
    with tempfile.TemporaryFile() as out:
        subprocess.run(
            [sys.executable, "-c", SAMPLER, "-", url, str(every)],
            stdout=out,
            cwd=ROOT,
            check=True,
        )
        out.seek(0)
        samples: list[list[float]] = json.loads(out.read())
        return samples


def baseline() -> float:
    """Peak RSS of the CLI doing nothing but start (interpreter, imports, argparse)."""
    peak, _, _ = run_measured(["audit", "replay", "--help"])
    return round(peak, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--first", type=int, default=100_000, help="the smaller measurement")
    p.add_argument("--per-pipeline", type=int, default=1000)
    p.add_argument("--single", type=int, nargs="*", default=[25_000, 100_000])
    p.add_argument("--out", help="also write the results as JSON here")
    a = p.parse_args()

    server = RedisServer()
    results: dict[str, Any] = {"events": a.events, "perPipeline": a.per_pipeline}
    try:
        r = redis.Redis.from_url(server.url)
        keys = Keys(partitions=PARTITIONS)
        r.hset(keys.config(), mapping={"partitions": PARTITIONS, "layout": 2})
        t0 = time.perf_counter()
        template = history(TEMPLATE, a.per_pipeline)
        results["payloadBytesAvg"] = round(sum(map(len, template)) / len(template))
        print(
            f"template: {len(template)} events, {results['payloadBytesAvg']} B/payload avg, "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        results["baselineRssMiB"] = baseline()
        print(f"baseline (interpreter + imports): {results['baselineRssMiB']} MiB", flush=True)

        written = 0
        index = 0
        t0 = time.perf_counter()
        runs: list[dict[str, Any]] = []
        for target in (a.first, a.events):
            while written < target:
                n = min(a.per_pipeline, target - written)
                name = f"p{index:06d}"
                write_pipeline(r, keys, name, stamp(template[:n], index, name))
                written += n
                index += 1
            print(
                f"log: {written} events in {index} pipelines "
                f"(written in {time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
            m = replay_cli(server.url)
            m.update(events=written, pipelines=index)
            peak, secs, _ = run_measured(
                [
                    "audit",
                    "verify",
                    "--quiet",
                    "--no-progress",
                    "--redis-url",
                    server.url,
                    "--partitions",
                    str(PARTITIONS),
                ]
            )
            m["verify"] = {"peak_rss_mib": round(peak, 1), "seconds": round(secs, 1)}
            runs.append(m)
            print(
                f"  stageline audit replay: peak RSS {m['peak_rss_mib']} MiB, "
                f"{m['seconds']}s ({written / m['seconds']:.0f} ev/s); "
                f"audit verify: peak RSS {m['verify']['peak_rss_mib']} MiB, "
                f"{m['verify']['seconds']}s",
                flush=True,
            )
        results["replay"] = runs

        results["samples"] = sampled(server.url, 100_000)  # [events, RSS now, peak RSS]
        print("sampled during one replay of the whole log (events, RSS MiB, peak MiB):")
        for n, now, peak in results["samples"]:
            print(f"  {n:>9}  {now:>7}  {peak:>7}")

        single = []
        for n in a.single:
            name = f"single{n}"
            t0 = time.perf_counter()
            write_pipeline(r, keys, name, stamp(history(TEMPLATE, n, seed=n), 0xFFFF, name))
            m = replay_cli(server.url, name)
            m["events"] = n
            single.append(m)
            print(
                f"one pipeline of {n} events: peak RSS {m['peak_rss_mib']} MiB "
                f"(generated in {time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
        results["singlePipeline"] = single
        info: Any = r.info("memory")
        results["redisUsedMemoryMiB"] = round(info["used_memory"] / 2**20)
    finally:
        server.stop()
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
