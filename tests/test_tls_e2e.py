"""TLS on terminal links, end to end on loopback with certificates trustme makes per run: a
terminal dialling in to the TLS listener, client certificates required, the gateway dialling a
terminal that listens over TLS, and the HMAC handshake still deciding inside TLS."""

import trustme
from twisted.internet import defer, reactor

from gateway.config import ConfigError, GatewayConfig
from gateway.process.service import Gateway
from gateway.native.tls import TlsSetupError, server_options
from live_site import LiveTestCase, secret_of, wait_until
from processes import Process
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.terminal import Terminal
from simulator.tls import dialling_options, listening_options

TERMINAL, LISTENING = 301, 302


class Pki:
    """A CA and PEM files of the gateway's and a terminal's certificates, named localhost."""

    def __init__(self, folder):
        self.ca = trustme.CA()
        self.ca_file = self._write(folder / "ca.pem", self.ca.cert_pem)
        self.gateway_cert, self.gateway_key = self._issue(folder, "gateway")
        self.terminal_cert, self.terminal_key = self._issue(folder, "terminal")

    def _issue(self, folder, who: str) -> tuple[str, str]:
        issued = self.ca.issue_cert("localhost")
        return (self._write(folder / f"{who}.pem", issued.cert_chain_pems[0]),
                self._write(folder / f"{who}.key", issued.private_key_pem))

    @staticmethod
    def _write(path, blob) -> str:
        blob.write_to_path(str(path))
        return str(path)


class TlsTests(LiveTestCase):
    def setUp(self):
        self.pki = Pki(self.tmp_path)
        (self.tmp_path / "other").mkdir()
        self.other_ca = Pki(self.tmp_path / "other")
        self.dialling: list[DialingTerminal] = []

    def start_gateway(self, tls: dict | None = None, terminals: list[dict] | None = None) -> Gateway:
        entries = terminals or [dict(id=TERMINAL, secret=secret_of(TERMINAL))]
        config = GatewayConfig(db=self.db_url, tcp_host="127.0.0.1", tcp_port=0, http_port=0, terminals=entries, tls=tls)
        config.validate()
        gateway = Gateway(config, reactor)
        gateway.start()
        self.addCleanup(gateway.stop)
        return gateway

    def listener(self, client_ca: str | None = None) -> dict:
        tls = dict(host="127.0.0.1", port=0, cert=self.pki.gateway_cert, key=self.pki.gateway_key)
        return {**tls, "client_ca": client_ca} if client_ca else tls

    def dial_in(self, gateway, secret: str = secret_of(TERMINAL), ca: str | None = None, cert=None, key=None) -> Terminal:
        terminal = Terminal(TERMINAL, secret)
        options = dialling_options("localhost", ca or self.pki.ca_file, cert, key)
        dialler = DialingTerminal(terminal, reactor, "127.0.0.1", gateway.tls_port.getHost().port, tls=options).start()
        self.dialling.append(dialler)
        self.addCleanup(dialler.go_offline)
        return terminal

    @staticmethod
    def failed_attempts(gateway) -> list[str]:
        """Links that left the strangers without authenticating: the TLS handshake failed."""
        left, leave = [], gateway.doorman.leave
        gateway.doorman.leave = lambda source, *rest: (left.append(source), leave(source, *rest))
        return left

    @staticmethod
    def online(gateway) -> bool:
        return gateway.registry.connection(TERMINAL) is not None

    @defer.inlineCallbacks
    def test_a_terminal_dials_in_over_tls_and_its_events_are_stored(self):
        gateway = self.start_gateway(self.listener())
        terminal = self.dial_in(gateway)
        yield wait_until(lambda: self.online(gateway), "the terminal online over TLS")
        self.assertIn("127.0.0.1", gateway.registry.connection(TERMINAL).description)
        for n in range(5):
            terminal.verify(f"u{n}")
        yield wait_until(lambda: terminal.acked_through == 5, "five events acknowledged over TLS")

    @defer.inlineCallbacks
    def test_the_secret_still_decides_inside_tls(self):
        gateway = self.start_gateway(self.listener())
        self.dial_in(gateway, secret="not-the-secret")
        yield wait_until(lambda: gateway.metrics.value(gateway.metrics.refused, reason="auth_failed") >= 1, "a refusal")
        self.assertFalse(self.online(gateway))

    @defer.inlineCallbacks
    def test_a_gateway_certificate_from_another_ca_is_not_trusted_by_the_terminal(self):
        gateway = self.start_gateway(self.listener())
        failed = self.failed_attempts(gateway)
        terminal = self.dial_in(gateway, ca=self.other_ca.ca_file)
        yield wait_until(lambda: len(failed) >= 2, "two attempts that failed in TLS")
        self.assertFalse(self.online(gateway))
        self.assertFalse(terminal.authenticated)

    @defer.inlineCallbacks
    def test_client_certificates_when_required(self):
        gateway = self.start_gateway(self.listener(client_ca=self.pki.ca_file))
        failed = self.failed_attempts(gateway)
        self.dial_in(gateway)  # no certificate
        yield wait_until(lambda: len(failed) >= 2, "two attempts without a certificate refused")
        self.assertFalse(self.online(gateway))
        self.dialling.pop().go_offline()
        self.dial_in(gateway, cert=self.pki.terminal_cert, key=self.pki.terminal_key)
        yield wait_until(lambda: self.online(gateway), "the terminal with a certificate online")

    @defer.inlineCallbacks
    def test_the_gateway_dials_a_terminal_listening_over_tls(self):
        terminal = Terminal(LISTENING, secret_of(LISTENING))
        options = listening_options(self.pki.terminal_cert, self.pki.terminal_key, self.pki.ca_file)  # wants the gateway's certificate
        listening = ListeningTerminal(terminal, reactor).listen(0, "127.0.0.1", tls=options)
        self.addCleanup(listening.stopped)
        self.addCleanup(listening.go_offline)
        gateway = self.start_gateway(terminals=[dict(
            id=LISTENING, secret=secret_of(LISTENING), dial=f"127.0.0.1:{listening.port_number}", tls_ca=self.pki.ca_file,
            tls_name="localhost", tls_cert=self.pki.gateway_cert, tls_key=self.pki.gateway_key)])
        yield wait_until(lambda: gateway.registry.connection(LISTENING) is not None, "the dialled terminal online over TLS")
        terminal.verify("someone")
        yield wait_until(lambda: terminal.acked_through == 1, "its event acknowledged")


def test_a_tls_file_that_cannot_be_read_is_one_line_at_start(tmp_path):
    missing = str(tmp_path / "nope.pem")
    try:
        server_options(missing, missing)
    except TlsSetupError as exc:
        assert str(exc) == f"cannot read the TLS certificate {missing}: No such file or directory"
    else:
        raise AssertionError("no error")
    (tmp_path / "junk.pem").write_text("junk")
    try:
        server_options(str(tmp_path / "junk.pem"), str(tmp_path / "junk.pem"))
    except TlsSetupError as exc:
        assert "not a PEM certificate and its private key" in str(exc)


def test_tls_settings_of_a_terminal_need_tls_ca_and_dial():
    config = GatewayConfig(terminals=[dict(id=1, secret="s", tls_name="x")])
    try:
        config.validate()
    except ConfigError as exc:
        assert "need tls_ca and dial" in str(exc)
    else:
        raise AssertionError("accepted")



def test_simulator_terminal_dials_a_gateway_over_tls_as_an_operator_would(tmp_path):
    pki = Pki(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "t"\n[tls]\nhost = "127.0.0.1"\nport = 0\n'
                      f'cert = "{pki.gateway_cert}"\nkey = "{pki.gateway_key}"\n'
                      f'[[terminals]]\nid = {TERMINAL}\nsecret = "{secret_of(TERMINAL)}"\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'g.db'}",
                      "--tcp-port", "0", "--http-port", "0")
    try:
        port = gateway.wait_for(r"listening for terminals over TLS on 127.0.0.1:(\d+)").group(1)
        terminal = Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{port}", "--id", str(TERMINAL),
                           "--secret", secret_of(TERMINAL), "--tls-ca", pki.ca_file, "--tls-name", "localhost")
        try:
            gateway.wait_for(rf"terminal {TERMINAL} connected on tcp 127.0.0.1")
        finally:
            terminal.stop()
    finally:
        gateway.stop()


def test_simulator_tls_options_that_do_not_fit_are_a_usage_error(capsys):
    from simulator.cli import main
    assert main(["terminal", "--gateway", "127.0.0.1:1", "--id", "1", "--secret", "s", "--tls-cert", "c.pem"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["terminal", "--listen", "0", "--id", "1", "--secret", "s", "--tls-ca", "ca.pem"]) == 2
    assert "listening over TLS needs --tls-cert and --tls-key" in capsys.readouterr().err
