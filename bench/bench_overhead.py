"""Per-request overhead of the aiohttp and gRPC integrations against a static header.

Measured like ``bench_http`` in ``run.py`` (requests and httpx): a server in a process of its
own that never looks at the token; requests alternate one by one between the two sides, in
random order within each pair, each timed on its own; a round's ratio is the ratio of its two
medians, and the result is the median over the rounds (so load drift, GC pauses and scheduler
hiccups hit both sides alike and are shed).

* aiohttp: a ``ClientSession`` with ``TokenMiddleware`` against one whose default headers carry
  ``Authorization: Bearer <token>``, on one event loop, to the same keep-alive HTTP server.
* gRPC: unary calls over local channel credentials to a grpcio server in another process. The
  static header of gRPC is ``grpc.access_token_call_credentials(token)``, and ours is
  ``channel_credentials`` (a metadata plugin over the source). The retry interceptor is measured
  against the same static credentials behind a pass-through interceptor, because gRPC's
  interceptor plumbing costs any interceptor about 30 us per call; what is left is the exchange.
  gRPC runs every metadata plugin, static or not, on a thread it starts per call:
  ``per_call_metadata_us`` (the token passed as call metadata, no plugin) shows that cost, which
  belongs to gRPC's credentials mechanism, not to sa-token.

``python bench/bench_overhead.py [--quick]`` prints the JSON result and the targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
AUDIENCE = "bench"
# the per-request overhead target: within 2% of sending a static header
TARGET_RATIO = 1.02
SIZES = {
    True: {"rounds": 5, "block": 20},  # --quick: a smoke run (a few seconds)
    False: {"rounds": 31, "block": 40},
}

GRPC_SERVER = r"""
import sys
from concurrent import futures
import grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"ok")
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),))
local = grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
port = server.add_secure_port("127.0.0.1:0", local)
server.start()
sys.stdout.write(f"{port}\n")
sys.stdout.flush()
server.wait_for_termination()
"""


def paired(sides: dict[str, Callable[[], None]], rounds: int, block: int) -> dict[str, Any]:
    """Alternate the two sides request by request; per-round medians and their ratio."""
    (ours, base) = sides
    per_round: dict[str, list[float]] = {k: [] for k in sides}
    ratios: list[float] = []
    clock = time.perf_counter
    for r in range(rounds + 2):  # two warm-up rounds
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(block):
            order = list(sides)
            random.shuffle(order)
            for name in order:
                t0 = clock()
                sides[name]()
                times[name].append(clock() - t0)
        if r >= 2:
            meds = {k: statistics.median(v) for k, v in times.items()}
            for k, v in meds.items():
                per_round[k].append(v)
            ratios.append(meds[ours] / meds[base])
    ratios.sort()
    return {
        "rounds": rounds,
        "requests_per_round": block,
        "median_us": {k: statistics.median(v) * 1e6 for k, v in per_round.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_p25": ratios[len(ratios) // 4],
        "ratio_p75": ratios[(3 * len(ratios)) // 4],
    }


def _die_with_parent() -> None:
    """In the server's child, before exec: SIGTERM it when this process dies (PR_SET_PDEATHSIG),
    so that a benchmark killed by a timeout leaves no server behind."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _server(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent  # noqa: PLW1509
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def bench_aiohttp(source: Any, token: str, sz: dict[str, int]) -> dict[str, Any]:
    import aiohttp

    from sa_token.aiohttp import TokenMiddleware

    proc, port = _server([str(HERE / "_http_server.py")])
    url = f"http://127.0.0.1:{port}/"
    loop = asyncio.new_event_loop()
    try:
        async def pass_through(req: Any, handler: Any) -> Any:  # what any middleware costs
            return await handler(req)

        async def make() -> tuple[aiohttp.ClientSession, aiohttp.ClientSession, aiohttp.ClientSession]:
            header = {"Authorization": f"Bearer {token}"}
            return (aiohttp.ClientSession(middlewares=(TokenMiddleware(source),)),
                    aiohttp.ClientSession(headers=header),
                    aiohttp.ClientSession(headers=header, middlewares=(pass_through,)))

        ours, static, passing = loop.run_until_complete(make())

        def send(session: aiohttp.ClientSession) -> Callable[[], None]:
            async def one() -> None:
                async with session.get(url) as r:
                    await r.read()
                    assert r.status == 200

            return lambda: loop.run_until_complete(one())

        async def sent_header() -> str:
            async with ours.get(url) as r:
                return r.request_info.headers["Authorization"]

        assert loop.run_until_complete(sent_header()) == f"Bearer {token}"
        rounds, block = sz["rounds"], sz["block"]
        result = paired({"token_middleware": send(ours), "static_header": send(static)}, rounds, block)
        result["vs_pass_through_middleware"] = paired(
            {"token_middleware": send(ours), "static_header+pass_through": send(passing)}, rounds, block
        )
        for session in (ours, static, passing):
            loop.run_until_complete(session.close())
        return result
    finally:
        loop.close()
        proc.terminate()
        proc.wait()


def bench_grpc(source: Any, token: str, sz: dict[str, int]) -> dict[str, Any]:
    import grpc

    from sa_token.grpc import channel_credentials, intercept_channel

    class PassThrough(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        """What any interceptor costs: gRPC's interceptor plumbing, nothing else."""

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details, request)

    proc, port = _server(["-c", GRPC_SERVER])
    target = f"127.0.0.1:{port}"
    local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    static_creds = grpc.composite_channel_credentials(local, grpc.access_token_call_credentials(token))
    channels = {
        "call_credentials": grpc.secure_channel(target, channel_credentials(source, base=local)),
        "access_token_credentials": grpc.secure_channel(target, static_creds),
        "call_credentials+retry": intercept_channel(
            grpc.secure_channel(target, channel_credentials(source, base=local)), source),
        "access_token_credentials+pass_through": grpc.intercept_channel(
            grpc.secure_channel(target, static_creds), PassThrough()),
        "per_call_metadata": grpc.secure_channel(target, local),
    }
    metadata = (("authorization", f"Bearer {token}"),)

    def call(name: str) -> Callable[[], None]:
        stub = channels[name].unary_unary("/bench.Echo/Call")
        kw = {"metadata": metadata} if name == "per_call_metadata" else {}

        def one() -> None:
            assert stub(b"x", timeout=10, **kw) == b"ok"

        return one

    try:
        result = paired({k: call(k) for k in ("call_credentials", "access_token_credentials")},
                        sz["rounds"], sz["block"])
        pair = ("call_credentials+retry", "access_token_credentials+pass_through")
        retry = paired({k: call(k) for k in pair}, sz["rounds"], sz["block"])
        plain = paired({k: call(k) for k in ("call_credentials", "per_call_metadata")},
                       max(3, sz["rounds"] // 3), sz["block"])
        result["with_retry_interceptor"] = retry
        result["per_call_metadata_us"] = plain["median_us"]["per_call_metadata"]
        result["ratio_vs_per_call_metadata"] = plain["ratio_median"]
        return result
    finally:
        for ch in channels.values():
            ch.close()
        proc.terminate()
        proc.wait()


def run(*, quick: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from sa_token import TokenSource
    from sa_token.testing import ProjectedVolume, TokenIssuer

    sz = SIZES[quick]
    results: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory() as tmp:
        token = TokenIssuer().issue(audiences=[AUDIENCE], expiration_seconds=3600)
        vol = ProjectedVolume(Path(tmp) / "vol")
        vol.write({"token": token})
        with TokenSource(vol.token_path, audience=AUDIENCE) as source:
            for name, bench in (("aiohttp", bench_aiohttp), ("grpc", bench_grpc)):
                try:
                    results[name] = bench(source, token, sz)
                except ImportError as exc:
                    results[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
    return results


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    measured = {
        "aiohttp TokenMiddleware / static default header": result.get("aiohttp", {}).get("ratio_median"),
        "aiohttp TokenMiddleware / static header + pass-through middleware":
            result.get("aiohttp", {}).get("vs_pass_through_middleware", {}).get("ratio_median"),
        "gRPC call_credentials / access_token_call_credentials": result.get("grpc", {}).get("ratio_median"),
        "gRPC call_credentials + intercept_channel / access token + pass-through interceptor":
            result.get("grpc", {}).get("with_retry_interceptor", {}).get("ratio_median"),
    }
    return [
        {"name": f"{name} (per-request time, median of round ratios)", "value": round(value, 4),
         "target": f"< {TARGET_RATIO}", "ok": value < TARGET_RATIO}
        for name, value in measured.items() if value is not None
    ]


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    print(json.dumps({"result": res, "targets": targets(res)}, indent=2))
