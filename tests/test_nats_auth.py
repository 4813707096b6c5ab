"""NATS as deployed: every way of authenticating (user and password, token, NKey, .creds) and TLS
with a private CA and client certificates, each proved against a real nats-server configured for
it, by the bridge and by the KV idempotency store; wrong credentials stop both with a clear
error instead of a retry loop; secrets also come from files (``<NAME>_FILE``)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import pytest

from localstack.embedded import nats_server_binary, reachable
from runner.bridge import Bridge
from shared.errors import DependencyError
from shared.idempotency import ClaimState
from shared.idempotency.nats import NatsKvStore
from shared.infra import settings
from shared.infra.nats_connect import NatsRefused, connect, connect_options
from shared.infra.settings import NatsSettings, Settings
from tests.conftest import ROOT, free_port, invocation
from tests.runner_support import eventually

PASSWORD = "pa55-" + secrets.token_hex(8)  # random, so that finding it in a log line means it leaked
TOKEN = "t0ken-" + secrets.token_hex(8)


# --- a nats-server with the configuration under test --------------------------------------------


class ConfiguredNats:
    """nats-server with JetStream and the given configuration text, on a free loopback port."""

    def __init__(self, directory: Path, config: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "nats", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def start(self) -> ConfiguredNats:
        path = self.directory / "nats.conf"
        store = self.directory / "js"
        path.write_text(f'listen: "127.0.0.1:{self.port}"\njetstream {{ store_dir: "{store}" }}\n{self.config}\n')
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not await reachable(self.url(), 0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start: {self.process.stderr.read().decode()[-2000:]}")
            await asyncio.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
async def configured(tmp_path) -> AsyncIterator[Callable[[str], Any]]:
    started: list[ConfiguredNats] = []

    async def start(config: str) -> ConfiguredNats:
        directory = tmp_path / f"nats{len(started)}"
        directory.mkdir()
        server = await ConfiguredNats(directory, config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- keys, JWTs and certificates, made here ------------------------------------------------------


def nkey(prefix: int) -> nkeys.KeyPair:
    """A fresh NKey pair of the given role (nkeys.PREFIX_BYTE_USER, _ACCOUNT, _OPERATOR)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public(kp: nkeys.KeyPair) -> str:
    return kp.public_key.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2): claims signed by the issuer's NKey with ed25519."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": base64.b32encode(os.urandom(20)).decode(),
        "iat": int(time.time()),
        "iss": public(issuer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    signed = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
ACCOUNT_LIMITS = {
    **UNLIMITED,
    **{"imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1},
    **{"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},  # JetStream on
}


def creds(user_jwt: str, user: nkeys.KeyPair) -> str:
    """A .creds file's text, as `nsc generate creds` writes it."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )


def operator_setup(tmp_path: Path) -> tuple[str, Path, Path]:
    """nats-server configuration trusting one operator and its accounts, a user's .creds, and a stranger's."""
    operator, system, account, stranger_account = (nkey(p) for p in (nkeys.PREFIX_BYTE_OPERATOR, 0, 0, 0))
    operator_jwt = jwt(operator, public(operator), "operator", {"type": "operator", "system_account": public(system)})
    preload = {
        public(system): jwt(operator, public(system), "SYS", {"type": "account", "limits": UNLIMITED}),
        public(account): jwt(operator, public(account), "agents", {"type": "account", "limits": ACCOUNT_LIMITS}),
    }
    made = []
    for name, signer in (("user", account), ("stranger", stranger_account)):  # the stranger's account is unknown
        user = nkey(nkeys.PREFIX_BYTE_USER)
        claims = {"type": "user", "pub": {}, "sub": {}, **UNLIMITED}
        path = tmp_path / f"{name}.creds"
        path.write_text(creds(jwt(signer, public(user), name, claims), user))
        made.append(path)
    config = (
        f'operator: "{operator_jwt}"\nsystem_account: {public(system)}\nresolver: MEMORY\n'
        f"resolver_preload: {json.dumps(preload)}\n"
    )
    return config, made[0], made[1]


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


def make_pki(directory: Path) -> Pki:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            (directory / f"{name}-key.pem").write_bytes(pem)
        return directory / f"{name}.pem"

    def certificate(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None
    ) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer or (subject, key)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )

    def ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        cert = (
            certificate(name, key, None)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(name: str, root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], purpose: x509.ObjectIdentifier):
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        cert = (
            certificate(name, key, (root[0].subject, root[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .sign(root[1], hashes.SHA256())
        )
        return cert, key

    root, other = ca("agent-runtime test CA"), ca("some other CA")
    server, client = (
        leaf("nats", root, ExtendedKeyUsageOID.SERVER_AUTH),
        leaf("runner", root, ExtendedKeyUsageOID.CLIENT_AUTH),
    )
    return Pki(
        ca=write("ca", root[0]),
        server_cert=write("server", *server),
        server_key=directory / "server-key.pem",
        client_cert=write("client", *client),
        client_key=directory / "client-key.pem",
        other_ca=write("other-ca", other[0]),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(p: Pki) -> str:
    return f'tls {{ cert_file: "{p.server_cert}"\n key_file: "{p.server_key}"\n ca_file: "{p.ca}"\n verify: true }}\n'


# --- the cases: a server configuration, settings that reach it, and settings it refuses ----------


USERS = f'authorization {{ users = [ {{ user: "runtime", password: "{PASSWORD}" }} ] }}'
TOKENS = f'authorization {{ token: "{TOKEN}" }}'


async def case(name: str, tmp_path: Path, pki: Pki, configured: Callable[[str], Any]) -> tuple[dict, dict]:
    """Start the server for ``name``; return the nats settings it accepts and those it refuses."""
    if name == "user-password":
        server = await configured(USERS)
        good = {"url": server.url(), "user": "runtime", "password": PASSWORD}
        return good, {**good, "password": "not-" + PASSWORD}
    if name == "user-password-in-url":
        server = await configured(USERS)
        return {"url": server.url(userinfo=f"runtime:{PASSWORD}")}, {"url": server.url(userinfo="runtime:wrong")}
    if name == "token":
        server = await configured(TOKENS)
        return {"url": server.url(), "token": TOKEN}, {"url": server.url(), "token": "not-" + TOKEN}
    if name == "token-in-url":
        server = await configured(TOKENS)
        return {"url": server.url(userinfo=TOKEN)}, {"url": server.url()}  # refused: no credentials at all
    if name == "nkey":
        user, stranger = nkey(nkeys.PREFIX_BYTE_USER), nkey(nkeys.PREFIX_BYTE_USER)
        for who, kp in (("user", user), ("stranger", stranger)):
            (tmp_path / f"{who}.nk").write_bytes(kp.seed + b"\n")
        server = await configured(f'authorization {{ users = [ {{ nkey: "{public(user)}" }} ] }}')
        return (
            {"url": server.url(), "nkey_seed_file": str(tmp_path / "user.nk")},
            {"url": server.url(), "nkey_seed_file": str(tmp_path / "stranger.nk")},
        )
    if name == "creds":
        config, user_creds, stranger_creds = operator_setup(tmp_path)
        server = await configured(config)
        return {"url": server.url(), "creds_file": str(user_creds)}, {
            "url": server.url(),
            "creds_file": str(stranger_creds),
        }
    if name in ("tls-client-certificate", "tls-without-client-certificate"):
        server = await configured(tls_config(pki))
        good = {
            "url": server.url("tls"),
            "tls_ca_file": str(pki.ca),
            "tls_cert_file": str(pki.client_cert),
            "tls_key_file": str(pki.client_key),
        }
        if name == "tls-without-client-certificate":  # refused by the server: it verifies clients
            return good, {"url": good["url"], "tls_ca_file": str(pki.ca)}
        return good, {**good, "tls_ca_file": str(pki.other_ca)}  # refused here: the server's certificate is untrusted
    if name == "tls-not-offered":  # refused here: nats-py would carry on unencrypted
        server = await configured(USERS)
        good = {"url": server.url(), "user": "runtime", "password": PASSWORD}
        return good, {**good, "url": server.url("tls"), "tls_ca_file": str(pki.ca)}
    if name == "tls-and-password":
        server = await configured(tls_config(pki).replace("verify: true", "verify: false") + USERS)
        good = {"url": server.url("tls"), "tls_ca_file": str(pki.ca), "user": "runtime", "password": PASSWORD}
        return good, {**good, "password": "wrong"}
    raise AssertionError(name)


CASES = [
    "user-password",
    "user-password-in-url",
    "token",
    "token-in-url",
    "nkey",
    "creds",
    "tls-client-certificate",
    "tls-and-password",
]
REFUSALS = [*CASES, "tls-without-client-certificate", "tls-not-offered"]


def with_nats(**nats: Any) -> Settings:
    return Settings(nats=NatsSettings(**nats))


@pytest.fixture
def function(scripted_function):
    return scripted_function


@pytest.mark.parametrize("name", CASES)
async def test_the_bridge_connects_and_forwards(name, tmp_path, pki, configured, function, logs):
    good, _ = await case(name, tmp_path, pki, configured)
    s = with_nats(**good)
    b = Bridge(s, function.url)
    await b.start()
    publisher = await connect(s.nats.url.split(","), connect_options(s.nats))
    try:
        body = json.dumps(invocation(str(uuid.uuid4()))).encode()
        await publisher.publish(s.nats.invocation_subject, body)
        await publisher.flush()
        await eventually(lambda: function.calls_for(body) == 1, what="the invocation forwarded")
    finally:
        await publisher.close()
        await b.stop()
    assert PASSWORD not in logs.text and TOKEN not in logs.text


@pytest.mark.parametrize("name", CASES)
async def test_the_kv_store_connects_and_claims(name, tmp_path, pki, configured):
    good, _ = await case(name, tmp_path, pki, configured)
    store = NatsKvStore.from_settings(with_nats(**good))
    try:
        assert (await store.claim("agent:sofia/m1", 60)).state is ClaimState.NEW
        assert (await store.claim("agent:sofia/m1", 60)).state is ClaimState.IN_PROGRESS
    finally:
        await store.close()


@pytest.mark.parametrize("name", REFUSALS)
async def test_the_bridge_stops_at_a_refusal_and_says_why(name, tmp_path, pki, configured, function, logs):
    _, bad = await case(name, tmp_path, pki, configured)
    b = Bridge(with_nats(**bad), function.url)
    with pytest.raises(NatsRefused) as refused:
        await asyncio.wait_for(b.start(), 10)  # at once, not a retry loop
    message = str(refused.value)
    assert "check nats." in message and "127.0.0.1" in message
    assert PASSWORD not in message and TOKEN not in message and PASSWORD not in logs.text
    assert "NATS refused the bridge" in logs.text


@pytest.mark.parametrize("name", REFUSALS)
async def test_the_kv_store_turns_a_refusal_into_a_non_retryable_failure(name, tmp_path, pki, configured):
    _, bad = await case(name, tmp_path, pki, configured)
    store = NatsKvStore.from_settings(with_nats(**bad))
    with pytest.raises(DependencyError) as failed:
        await asyncio.wait_for(store.claim("agent:sofia/m1", 60), 10)
    assert failed.value.retryable is False and failed.value.kind == "unauthorized"
    assert "NATS KV" in str(failed.value) and "check nats." in str(failed.value)
    assert PASSWORD not in str(failed.value) and store.failing == "unauthorized"


async def test_the_runner_exits_non_zero_with_the_reason_on_wrong_credentials(configured):
    server = await configured(USERS)
    env = {
        **os.environ,
        "NATS_URL": server.url(),
        "NATS_USER": "runtime",
        "NATS_PASSWORD": "not-" + PASSWORD,
        "AGENT_RUNTIME__RUNNER__PORT": "0",
        "AGENT_RUNTIME__RUNNER__FUNCTION_URL": "http://127.0.0.1:9/invoke",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "local_runner.py", cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    text = out.decode()
    assert process.returncode != 0, text
    assert "refused the credentials" in text and "nats.password" in text
    assert PASSWORD not in text


async def test_an_unreachable_server_is_still_waited_for(function):
    b = Bridge(with_nats(url=f"nats://127.0.0.1:{free_port()}"), function.url)
    starting = asyncio.create_task(b.start())
    done, _ = await asyncio.wait({starting}, timeout=1.5)
    assert not done  # still trying: an outage is not a refusal
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nats", "message"),
    [
        ({"creds_file": "/nonexistent/user.creds"}, "nats.creds_file: cannot read /nonexistent/user.creds"),
        ({"nkey_seed_file": "/nonexistent/user.nk"}, "nats.nkey_seed_file: cannot read"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "nats.tls_ca_file: cannot read"),
        ({"tls_key_file": "/etc/hostname"}, "nats.tls_key_file is set without nats.tls_cert_file"),
        ({"password": "x"}, "nats.password is set without nats.user"),
        ({"creds_file": "/etc/hostname", "nkey_seed_file": "/etc/hostname"}, "both set"),
    ],
)
def test_a_configuration_mistake_is_named_at_start(nats, message):
    with pytest.raises(ValueError, match=message):
        connect_options(NatsSettings(**nats))


def test_credentials_from_the_environment_and_the_nats_cli_names():
    s = settings.load(
        {
            "NATS_URL": "tls://nats:4222",
            "AGENT_RUNTIME__NATS__USER": "runtime",
            "NATS_PASSWORD": PASSWORD,
            "NATS_CREDS": "/run/secrets/agent.creds",
            "AGENT_RUNTIME__NATS__TLS_CA_FILE": "/etc/nats/ca.pem",
        }
    )
    n = s.nats
    assert (n.user, n.password.get_secret_value(), n.creds_file, n.tls_ca_file) == (
        "runtime",
        PASSWORD,
        "/run/secrets/agent.creds",
        "/etc/nats/ca.pem",
    )
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump(mode="json"))


def test_every_secret_can_come_from_a_file(tmp_path):
    names = settings.secret_variables()
    assert {
        "AGENT_RUNTIME_SECRET",
        "LLM_PROXY_SECRET",
        "MEMORY_ORCHESTRATOR_SECRET",
        "MESSAGING_SERVICE_SECRET",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "AGENT_RUNTIME__NATS__PASSWORD",
    } <= names
    for name in names:
        path = tmp_path / name
        path.write_text(f"{name.lower()}-value\n")  # with the newline an editor leaves
        where = settings.ENV_ALIASES.get(name) or tuple(name.removeprefix(settings.ENV_PREFIX).lower().split("__"))
        value = getattr(getattr(settings.load({f"{name}_FILE": str(path)}), where[0]), where[1])
        assert value.get_secret_value() == f"{name.lower()}-value", name


def test_a_secret_set_directly_wins_over_its_file(tmp_path):
    (tmp_path / "secret").write_text("from-file")
    s = settings.load({"AGENT_RUNTIME_SECRET": "direct", "AGENT_RUNTIME_SECRET_FILE": str(tmp_path / "secret")})
    assert s.runtime.secret.get_secret_value() == "direct"


def test_a_missing_secret_file_names_its_variable():
    with pytest.raises(ValueError, match="LLM_PROXY_SECRET_FILE: cannot read /run/secrets/missing"):
        settings.load({"LLM_PROXY_SECRET_FILE": "/run/secrets/missing"})


def test_file_variables_of_what_is_not_a_secret_are_left_alone(tmp_path):
    s = settings.load({"AGENT_RUNTIME__NATS__CREDS_FILE": "/run/secrets/agent.creds", "NATS_URL_FILE": "/nowhere"})
    assert s.nats.creds_file == "/run/secrets/agent.creds" and s.nats.url == "nats://nats:4222"
