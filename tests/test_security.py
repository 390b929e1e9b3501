"""Tenants, mTLS and Redis over TLS, against real workers, a real Redis and real TLS on loopback.

Certificates are made in the test (tests/certs.py); the TLS Redis is a real `redis-server --tls-port`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from certs import Authority
from sam3_client import ChannelSettings, Client, ObjectPrompt, Sam3Error
from sam3_serving.health_check import check
from sam3_serving.outcome import Outcome
from sam3_serving.redis_server import find_server_binary, free_port
from service_stack import running
from test_service_behaviour import new_image, prefix


def model_runs() -> float:
    return REGISTRY.get_sample_value("sam3_model_runs_total", {"worker": "encoder"}) or 0.0


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


def assert_tenant_isolation(alice: Client, bob: Client) -> None:
    """Bob can neither read Alice's image nor learn that it was ever encoded."""
    data = new_image(200)
    mine = alice.segment(data, points=[[5, 5]])
    answers = set()
    for image_id in (mine.image_id, "f" * 64):  # the same answer for "Alice's" and "nobody's"
        with pytest.raises(Sam3Error) as failure:
            bob.segment(image_id, points=[[5, 5]])
        assert failure.value.code == grpc.StatusCode.NOT_FOUND
        answers.add(failure.value.message.replace(image_id, "<id>"))
    assert len(answers) == 1
    (streamed,) = bob.segment_stream([(mine.image_id, ObjectPrompt([[5, 5]]))])  # the interactive path too
    assert streamed.error is not None and streamed.error.code == grpc.StatusCode.NOT_FOUND
    runs = model_runs()
    encoded = bob.encode(data)
    assert not encoded.cached and model_runs() == runs + 1  # Bob's encode is a real one, not a cache hit
    again = alice.segment(mine.image_id, points=[[5, 5]])  # and Alice's value is untouched
    np.testing.assert_array_equal(again.objects[0].mask, mine.objects[0].mask)


def test_tenants_from_tokens_never_see_each_other(redis_url: str, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    tenants.write_text("# tenant token\nalice alice-t0ken\nbob   bob-t0ken   # second team\n")
    namespace = prefix()
    with running(redis_url, namespace, server={"tenants_file": str(tenants)}) as stack:
        with (
            Client(stack.target, settings=ChannelSettings(token="alice-t0ken")) as alice,
            Client(stack.target, settings=ChannelSettings(token="bob-t0ken")) as bob,
            Client(stack.target, settings=ChannelSettings(token="carol-t0ken", retry_attempts=1)) as stranger,
        ):
            assert_tenant_isolation(alice, bob)
            with pytest.raises(Sam3Error) as failure:
                stranger.model_info()
            assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED
        keys = {key.decode() for key in redis.Redis.from_url(redis_url).scan_iter(f"{namespace}:*emb*")}
        assert keys and all(key.startswith((f"{namespace}:tenant:alice:", f"{namespace}:tenant:bob:")) for key in keys)


@pytest.mark.parametrize(
    "line", ["alice", "alice tok en", "al:ice token", "alice tok!en", "alice same\nbob same"], ids=repr
)
def test_bad_tenants_files_fail_at_startup_naming_the_line(tmp_path: Path, line: str) -> None:
    from sam3_serving.auth import load_tenant_tokens

    path = tmp_path / "tenants"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(ValueError, match=rf"{path}:\d") as failure:
        load_tenant_tokens(str(path))
    assert "tok!en" not in str(failure.value) and "same" not in str(failure.value).split(":", 2)[-1][:6]


def mtls_server(authority: Authority, **extra: object) -> dict[str, object]:
    server = authority.issue("localhost", server=True)
    return {"tls_cert": str(server.cert), "tls_key": str(server.key), "tls_client_ca": str(authority.cert), **extra}


def mtls(authority: Authority, name: str | None, **options: object) -> ChannelSettings:
    issued = authority.issue(name) if name else None
    return ChannelSettings(
        tls=True,
        root_certificates=authority.cert.read_bytes(),
        tls_server_name="localhost",
        client_certificate=issued.cert_pem if issued else None,
        client_key=issued.key_pem if issued else None,
        **options,  # type: ignore[arg-type]
    )


def test_mtls_requires_a_client_certificate_from_the_ca(redis_url: str, authority: Authority, tmp_path: Path) -> None:
    with running(redis_url, prefix(), server=mtls_server(authority)) as stack:
        with Client(stack.target, settings=mtls(authority, "worker-1")) as client:
            assert client.segment(new_image(201), points=[[3, 3]]).objects[0].mask.shape == (48, 64)
        stranger = Authority(tmp_path, "another CA")
        foreign = stranger.issue("worker-1")
        refused = [
            mtls(authority, None, retry_attempts=1),  # no client certificate
            ChannelSettings(  # a certificate the workers' CA never signed
                tls=True,
                root_certificates=authority.cert.read_bytes(),
                tls_server_name="localhost",
                client_certificate=foreign.cert_pem,
                client_key=foreign.key_pem,
                retry_attempts=1,
            ),
            ChannelSettings(retry_attempts=1),  # plaintext
        ]
        for settings in refused:
            with Client(stack.target, settings=settings) as client, pytest.raises(Sam3Error) as failure:
                client.model_info(timeout=5)
            assert failure.value.code == grpc.StatusCode.UNAVAILABLE
        # Health too needs the certificate (`sam3 health --tls-client-cert ... --tls-client-key ...`).
        probe = authority.issue("probe")
        trust = {"root_certificates": authority.cert.read_bytes()}
        target = f"localhost:{stack.worker.port}"
        assert check(target, timeout=5, client_certificate=probe.cert_pem, client_key=probe.key_pem, **trust) == (
            "SERVING"
        )
        with pytest.raises(grpc.RpcError) as refused_probe:
            check(target, timeout=5, **trust)
        assert refused_probe.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_common_name_is_the_tenant(redis_url: str, authority: Authority) -> None:
    with running(redis_url, prefix(), server=mtls_server(authority, tenant_from_cert=True)) as stack:
        with (
            Client(stack.target, settings=mtls(authority, "alice")) as alice,
            Client(stack.target, settings=mtls(authority, "bob")) as bob,
        ):
            assert_tenant_isolation(alice, bob)
        odd = mtls(authority, "not a tenant!")
        with Client(stack.target, settings=odd) as client, pytest.raises(Sam3Error) as failure:
            client.model_info()
        assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED and "common name" in failure.value.message


def _start_tls_redis(binary: str, port: int, folder: Path, authority: Authority) -> subprocess.Popen[str] | str:
    """A server listening only on a TLS port, answering PING over TLS; or why it did not start."""
    server = authority.issue("localhost", server=True)
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
         "--tls-ca-cert-file", str(authority.cert), "--tls-auth-clients", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            redis.Redis(port=port, ssl=True, ssl_ca_certs=str(authority.cert), socket_timeout=1).ping()
            return process
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.kill()
    return process.communicate()[0][-300:]


@pytest.fixture
def tls_redis(tmp_path: Path, authority: Authority) -> Iterator[str]:
    """A real Redis on a TLS-only port (the first server binary built with TLS); its rediss:// URL."""
    found = find_server_binary()[0]
    candidates = dict.fromkeys([*([str(found)] if found else []), "redis-server", "valkey-server"])
    failures = []
    for binary in candidates:
        port = free_port()
        try:
            started = _start_tls_redis(binary, port, tmp_path, authority)
        except OSError as error:
            failures.append(f"{binary}: {error}")
            continue
        if isinstance(started, str):
            if "TLS" not in started:
                raise RuntimeError(f"{binary} with --tls-port did not start: {started}")
            failures.append(f"{binary}: built without TLS support")
            continue
        try:
            yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={authority.cert}"
        finally:
            started.terminate()
            started.wait(10)
        return
    pytest.skip("needs a Redis server binary built with TLS (e.g. Debian's redis-server): " + "; ".join(failures))


def test_redis_over_tls(tls_redis: str) -> None:
    namespace = prefix()
    with running(tls_redis, namespace) as stack, Client(stack.target) as client:
        first = client.segment(new_image(202), points=[[4, 4]])
        assert first.encoded is not None and not first.encoded.cached
        assert stack.store.get(stack.embeddings, first.image_id).outcome == Outcome.REDIS
        plaintext = tls_redis.replace("rediss://", "redis://").split("?")[0]
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(plaintext, socket_timeout=1).ping()  # the port speaks TLS only
