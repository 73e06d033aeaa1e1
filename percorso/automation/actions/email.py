"""Email steps: check and render the templates, add tracking, build the message, send it over SMTP.

The pieces run in this order, and only the last one does I/O::

    problems = check_templates(subject, text, html)          # when an automation is saved
    rendered = render_email(subject, text, html, variables)  # per contact
    html = add_tracking(rendered.html, open_url=..., click_url=...)
    message = build_message(rendered, to=..., sender=settings.sender,
                            unsubscribe_url=..., idempotency_key=outbox_item.key)
    send_email(message, SmtpSettings.from_env())

Templates are Jinja2 in a sandbox: they see only :data:`ALLOWED_VARIABLES`, cannot reach Python
internals, and a missing trait renders as an empty string rather than failing the send. Every
failure is a :class:`DeliveryError` that says whether retrying can help.
"""

from __future__ import annotations

import difflib
import hashlib
import html as html_lib
import operator
import os
import re
import smtplib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SecurityError

from percorso.automation.actions.errors import DeliveryError
from percorso.automation.actions.sandbox import (
    MAX_SOURCE_CHARS,
    EmailSandbox,
    RenderLimit,
    check_binop,
    check_size,
    rendering,
)

#: The root names a template may use; in this order in messages.
VARIABLE_ORDER = ("contact", "traits", "events", "automation", "unsubscribe_url", "survey_url", "now")
ALLOWED_VARIABLES: frozenset[str] = frozenset(VARIABLE_ORDER)


class TemplateProblem(ValueError):
    """One or more problems with an email's templates, as messages a person can act on."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _blank_none(value: Any) -> Any:
    # A trait stored as null should read as nothing, not as the word "None".
    return "" if value is None else value


def _environment(*, autoescape: bool) -> EmailSandbox:
    return EmailSandbox(
        autoescape=autoescape,
        undefined=ChainableUndefined,
        finalize=_blank_none,
        keep_trailing_newline=True,
    )


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


def _env_for(part: str) -> EmailSandbox:
    return _HTML_ENV if part == "html" else _TEXT_ENV


@lru_cache(maxsize=256)
def _compiled(part: str, source: str) -> Template:
    # The same step renders for many contacts; compile each template once.
    template = _env_for(part).from_string(source)
    # Jinja chains the template's and the environment's globals and walks that chain on every
    # render; both are fixed here, so one plain dict renders the same, faster.
    template.globals = dict(template.globals)
    return template


def check_templates(subject: str, text: str, html: str | None) -> list[str]:
    """Every problem with an email's templates, each naming the part and the line; ``[]`` when fine.

    Example::

        >>> check_templates("Hi {{ frist_name }}", "Hello", None)  # doctest: +ELLIPSIS
        ["subject: unknown variable 'frist_name' (available: contact, traits, ...), line 1 — ..."]
    """
    return [f"{part}: {message}" for part, message in template_problems(subject, text, html)]


def template_problems(
    subject: str, text: str, html: str | None, *, trial: bool = True
) -> list[tuple[str, str]]:
    """Every problem with an email's templates as ``(part, message)``; ``[]`` when fine.

    ``trial`` also renders each part once for a sample contact, within the render budget, so a
    template that loops or grows without end, or reaches for internals, is refused when saved;
    without it (a stored definition) only what was always refused is: syntax and variables."""
    problems: list[tuple[str, str]] = []
    parts = [("subject", subject), ("text", text)]
    if html is not None:
        parts.append(("html", html))
    for part, source in parts:
        if len(source) > MAX_SOURCE_CHARS:
            problems.append(
                (part, f"the template is {len(source):,} characters long; the most is {MAX_SOURCE_CHARS:,}")
            )
            continue
        env = _env_for(part)
        try:
            tree = env.parse(source)
            env.compile(tree)  # unknown filters and tests are only found when compiling
        except TemplateSyntaxError as exc:
            # A TemplateAssertionError (unknown filter or test) is a subclass but not about syntax.
            kind = "syntax error" if type(exc) is TemplateSyntaxError else "error"
            problems.append((part, f"{kind} on line {exc.lineno}: {exc.message}"))
            continue
        found = _tree_problems(tree, costs=trial)
        if not found and trial:
            found = _trial_problems(part, source)
        problems += [(part, message) for message in found]
    return problems


def _tree_problems(tree: nodes.Template, *, costs: bool = True) -> list[str]:
    """What the parsed template shows; ``costs``: also ``self`` and constants too large to build
    (a definition stored before those were refused loads, and the render refuses them at send)."""
    problems: list[str] = []
    if any(True for _ in meta.find_referenced_templates(tree)):
        problems.append(
            "include, import and extends are not available in email templates; write the content inline"
        )
    for name in sorted(meta.find_undeclared_variables(tree) - ALLOWED_VARIABLES):
        problems.append(_unknown_variable(tree, name))
    if not costs:
        return problems
    lines = [n.lineno for n in tree.find_all(nodes.Name) if n.name == "self" and n.ctx == "load"]
    if lines:
        # The template's own reference: blocks and the render context, which no email needs.
        problems.append(f"'self' is not available in email templates, line {min(lines)}")
    for expression in tree.find_all(nodes.BinExpr):
        try:
            _constant(expression)
        except RenderLimit as exc:
            problems.append(f"line {expression.lineno}: {exc}; {_TOO_COSTLY}")
            break
        except Exception:  # not a constant, or one that fails at render time as it would here
            continue
    return problems


_TOO_COSTLY = "an email template may not build values that large"
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "*": operator.mul,
    "**": operator.pow,
    "%": operator.mod,
    "+": operator.add,
    "-": operator.sub,
    "/": operator.truediv,
    "//": operator.floordiv,
}


def _constant(node: nodes.Node) -> Any:
    """The value of a constant expression, computed under the render limits."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.BinExpr) and node.operator in _OPERATORS:
        left, right = _constant(node.left), _constant(node.right)
        check_binop(node.operator, left, right)
        return check_size(_OPERATORS[node.operator](left, right))
    if isinstance(node, nodes.Neg):
        return -_constant(node.node)
    if isinstance(node, nodes.List | nodes.Tuple):
        return [_constant(item) for item in node.items]
    raise ValueError("not a constant")


#: What a template sees when it is tried at save time: a contact with no traits and no events.
_SAMPLE: dict[str, Any] = {
    "contact": {"id": 1, "email": "someone@example.com"},
    "traits": {},
    "events": [],
    "automation": {"key": "sample", "name": "Sample"},
    "unsubscribe_url": "https://percorso.invalid/u/sample",
    "survey_url": lambda survey, score=None: f"https://percorso.invalid/s/{survey}?score={score}",
    "now": datetime(2026, 1, 1, tzinfo=UTC),
}


def _trial_problems(part: str, source: str) -> list[str]:
    try:
        _render(part, source, _SAMPLE)
    except DeliveryError as exc:
        if isinstance(exc.__cause__, RenderLimit | SecurityError):
            return [str(exc.__cause__) + _fix(exc.__cause__)]
        if isinstance(exc.__cause__, RecursionError | MemoryError):
            # Whatever the contact, a macro that calls itself without end fails the same way.
            return [
                f"it does not finish rendering ({type(exc.__cause__).__name__}: a macro that calls "
                "itself without end?); an email template must render within the limits (see docs/automations.md)"
            ]
    return []


def _fix(exc: Exception) -> str:
    if isinstance(exc, RenderLimit):
        return "; an email template must render within the limits (see docs/automations.md)"
    return "; remove it from the template"


def _unknown_variable(tree: nodes.Template, name: str) -> str:
    lines = [n.lineno for n in tree.find_all(nodes.Name) if n.name == name and n.ctx == "load"]
    where = f", line {min(lines)}" if lines else ""
    guess = difflib.get_close_matches(name, VARIABLE_ORDER, n=1)
    fix = f"did you mean {guess[0]!r}?" if guess else f"a contact trait is written traits.{name}"
    return f"unknown variable {name!r} (available: {', '.join(VARIABLE_ORDER)}){where} — {fix}"


@dataclass(frozen=True)
class RenderedEmail:
    """An email's subject and bodies for one contact, ready to become a message."""

    subject: str
    text: str
    html: str | None


def render_email(subject: str, text: str, html: str | None, variables: Mapping[str, Any]) -> RenderedEmail:
    """Render the three templates for one contact; HTML is autoescaped, subject and text are not.

    Missing values (``traits.first_name`` on a contact without one) render as empty strings. A
    template that cannot render raises a permanent :class:`DeliveryError`. The subject is folded
    onto one line so no value can inject a header.

    Example::

        >>> render_email("Hi {{ traits.name }}", "Hello", None, {"traits": {}}).subject
        'Hi'
    """
    rendered_subject = _render("subject", subject, variables)
    rendered_text = _render("text", text, variables)
    rendered_html = None if html is None else _render("html", html, variables)
    return RenderedEmail(" ".join(rendered_subject.split()), rendered_text, rendered_html)


def _render(part: str, source: str, variables: Mapping[str, Any]) -> str:
    if len(source) > MAX_SOURCE_CHARS:
        raise DeliveryError(
            f"the {part} template is {len(source):,} characters long; the most is {MAX_SOURCE_CHARS:,}",
            transient=False,
        )
    try:
        with rendering():
            return _compiled(part, source).render(variables)
    except RenderLimit as exc:
        raise DeliveryError(f"the {part} template was stopped: {exc}{_fix(exc)}", transient=False) from exc
    except SecurityError as exc:
        raise DeliveryError(
            f"the {part} template tried something the sandbox forbids ({exc}); remove it from the template",
            transient=False,
        ) from exc
    except TemplateSyntaxError as exc:
        raise DeliveryError(
            f"the {part} template has a syntax error on line {exc.lineno}: {exc.message}", transient=False
        ) from exc
    except Exception as exc:
        # Anything else a template raises (an undefined used in arithmetic, a division by zero)
        # happens again on every retry, so it is permanent.
        raise DeliveryError(
            f"the {part} template could not be rendered: {type(exc).__name__}: {exc}", transient=False
        ) from exc


# An <a> or <area> start tag; quoted attribute values may contain '>'.
_LINK_TAG = re.compile(r"""<(?:a|area)(?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
# One attribute inside a tag. Matching whole attributes left to right means text inside another
# attribute's quoted value (title="href=...") is consumed with it and never taken for an href.
_ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def add_tracking(
    html: str,
    *,
    open_url: str | None,
    click_url: Callable[[str], str] | None,
    unsubscribe_url: str | None = None,
) -> str:
    """Send http(s) links through ``click_url`` and add a 1x1 open pixel before ``</body>``.

    ``mailto:``, ``tel:`` and ``#anchor`` links stay as they are, and so does the unsubscribe
    link: it must work even when the tracker is down. ``click_url`` receives the link as the
    reader would follow it (``&amp;`` already decoded).

    Example::

        >>> add_tracking('<a href="https://x.test/">x</a>', open_url=None,
        ...              click_url=lambda url: "https://t.test/c?u=" + url)
        '<a href="https://t.test/c?u=https://x.test/">x</a>'
    """
    if click_url is not None:
        skip = html_lib.unescape(unsubscribe_url).strip() if unsubscribe_url else None

        def rewrite_tag(tag: re.Match[str]) -> str:
            return _rewrite_href(tag.group(0), click_url, skip)

        html = _LINK_TAG.sub(rewrite_tag, html)
    if open_url is not None:
        pixel = (
            f'<img src="{html_lib.escape(open_url, quote=True)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0" />'
        )
        ends = list(_BODY_END.finditer(html))
        if ends:
            at = ends[-1].start()
            html = html[:at] + pixel + html[at:]
        else:
            html += pixel
    return html


def _rewrite_href(tag: str, click_url: Callable[[str], str], skip: str | None) -> str:
    name_end = re.match(r"<\w+", tag)
    assert name_end is not None, "_LINK_TAG only matches tags that start with a name"
    for attribute in _ATTRIBUTE.finditer(tag, name_end.end()):
        if attribute.group(1).lower() != "href":
            continue
        values = [g for g in (2, 3, 4) if attribute.group(g) is not None]
        if not values:  # a bare `href` with no value
            return tag
        group = values[0]
        original = html_lib.unescape(attribute.group(group)).strip()
        if not original.lower().startswith(("http://", "https://")) or original == skip:
            return tag
        tracked = html_lib.escape(click_url(original), quote=True)
        start, end = attribute.span(group)
        if group == 4:  # an unquoted value: quote the replacement
            tracked = f'"{tracked}"'
        return tag[:start] + tracked + tag[end:]
    return tag


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the SMTP server; :meth:`from_env` reads the ``PERCORSO_SMTP_*`` variables."""

    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: str = ""
    starttls: bool = False
    ssl: bool = False  # implicit TLS from the first byte (usually port 465)
    sender: str = "percorso <noreply@localhost>"
    timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings:
        """Settings from the environment (or ``environ``); a bad value raises ``ValueError`` naming it.

        ``PERCORSO_SMTP_HOST``, ``_PORT`` (default 25, or 465 with ``_SSL``), ``_USER``, ``_PASSWORD``,
        ``_STARTTLS`` and ``_SSL`` (1/true/yes/on or 0/false/no/off) and ``_FROM``.

        Example::

            >>> SmtpSettings.from_env({"PERCORSO_SMTP_HOST": "mail.example.com", "PERCORSO_SMTP_SSL": "1"}).port
            465
        """
        env = os.environ if environ is None else environ
        defaults = cls()
        use_ssl = _flag(env, "PERCORSO_SMTP_SSL")
        use_starttls = _flag(env, "PERCORSO_SMTP_STARTTLS")
        if use_ssl and use_starttls:
            raise ValueError(
                "PERCORSO_SMTP_SSL and PERCORSO_SMTP_STARTTLS are both set; choose one "
                "(SSL for port 465, STARTTLS for port 587)"
            )
        raw_port = env.get("PERCORSO_SMTP_PORT", "").strip()
        port = 465 if use_ssl else defaults.port
        if raw_port:
            try:
                port = int(raw_port)
            except ValueError:
                port = 0
            if not 0 < port < 65536:
                raise ValueError(
                    f"PERCORSO_SMTP_PORT must be a port number from 1 to 65535, not {raw_port!r}"
                )
        return cls(
            host=env.get("PERCORSO_SMTP_HOST", "").strip() or defaults.host,
            port=port,
            username=env.get("PERCORSO_SMTP_USER", ""),
            password=env.get("PERCORSO_SMTP_PASSWORD", ""),
            starttls=use_starttls,
            ssl=use_ssl,
            sender=env.get("PERCORSO_SMTP_FROM", "").strip() or defaults.sender,
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1/true or 0/false, not {env[name]!r}")


def message_id(idempotency_key: str, domain: str = "percorso.local") -> str:
    """The Message-ID for an outbox item: the same key always gives the same id, so a resend
    after a crash is recognisable as the same message."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


def build_message(
    rendered: RenderedEmail,
    *,
    to: str,
    sender: str,
    unsubscribe_url: str | None,
    idempotency_key: str,
    domain: str = "percorso.local",
    date: datetime | None = None,
) -> EmailMessage:
    """A MIME message: text, plus an HTML alternative when there is one, with one-click unsubscribe.

    Example::

        >>> rendered = RenderedEmail("Hello", "Hi there", None)
        >>> message = build_message(rendered, to="ada@example.com", sender="shop <news@shop.test>",
        ...                         unsubscribe_url=None, idempotency_key="run-1:step-2")
        >>> message["Message-ID"] == message_id("run-1:step-2")
        True
    """
    if "\r" in to or "\n" in to or "@" not in parseaddr(to)[1]:
        raise DeliveryError(f"{to!r} is not an email address; fix the contact's email", transient=False)
    if unsubscribe_url is not None and ("\r" in unsubscribe_url or "\n" in unsubscribe_url):
        raise DeliveryError("the unsubscribe URL contains a line break", transient=False)
    message = EmailMessage()
    try:
        message["From"] = sender
    except (ValueError, IndexError) as exc:
        raise DeliveryError(
            f"the sender {sender!r} is invalid: {exc}; fix PERCORSO_SMTP_FROM", transient=False
        ) from exc
    message["To"] = to
    message["Subject"] = " ".join(rendered.subject.split())
    message["Date"] = formatdate(date.timestamp() if date else None, usegmt=True)  # the engine's time
    message["Message-ID"] = message_id(idempotency_key, domain)
    message["X-Percorso-Idempotency-Key"] = idempotency_key
    if unsubscribe_url is not None:
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    message.set_content(rendered.text)
    if rendered.html is not None:
        message.add_alternative(rendered.html, subtype="html")
    return message


def send_email(message: EmailMessage, settings: SmtpSettings) -> None:
    """Hand the message to the SMTP server; a failure raises :class:`DeliveryError`.

    Refusals with a 5xx code are permanent; 4xx codes, timeouts, refused or dropped connections
    and server-side problems (login, TLS) are transient: the message is not at fault, so it is
    retried once the server or its settings are fixed.

    Example::

        send_email(message, SmtpSettings(host="127.0.0.1", port=1025))
    """
    with SmtpSession(settings) as session:
        session.send(message)


class SmtpSession:
    """One SMTP connection kept open for several messages (a sender's batch), failing the same
    way as :func:`send_email`. A kept connection the server closed while idle is replaced once;
    after any other failure the next message opens a new one.

    Example::

        with SmtpSession(settings) as session:
            for message in messages:
                session.send(message)
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._client: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        try:
            if settings.starttls:
                client.starttls(context=ssl.create_default_context())
            if settings.username:
                client.login(settings.username, settings.password)
        except BaseException:
            client.close()
            raise
        return client

    def _send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        kept = self._client is not None
        if self._client is None:
            self._client = self._connect()
        try:
            return self._client.send_message(message)
        except smtplib.SMTPServerDisconnected:
            self._client.close()
            self._client = None
            if not kept:
                raise
        # The server closed the kept connection while it was idle: once more, on a new one.
        self._client = self._connect()
        return self._client.send_message(message)

    def send(self, message: EmailMessage) -> None:
        """Hand one message to the server; a failure raises :class:`DeliveryError`."""
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            refused = self._send(message)
        except Exception as exc:
            if self._client is not None:
                self._client.close()
                self._client = None
            error = _failure(exc, where, self.settings)
            if error is exc:
                raise
            raise error from exc
        if refused:  # some, not all, recipients refused
            raise _refused(where, refused)


def _failure(exc: Exception, where: str, settings: SmtpSettings) -> Exception:
    """The :class:`DeliveryError` an SMTP exception means (anything else is returned as is)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _refused(where, exc.recipients)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return _by_code(where, f"refused the sender {exc.sender}", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPDataError):
        return _by_code(where, "refused the message", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryError(
            f"SMTP server {where} rejected the login for {settings.username!r} ({exc.smtp_code} "
            f"{_text(exc.smtp_error)}); check PERCORSO_SMTP_USER and PERCORSO_SMTP_PASSWORD",
            transient=True,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryError(
            f"SMTP server {where} does not support what the settings ask for ({exc}); "
            "check PERCORSO_SMTP_STARTTLS and PERCORSO_SMTP_SSL",
            transient=True,
        )
    if isinstance(exc, smtplib.SMTPConnectError | smtplib.SMTPHeloError):
        # The server turned the connection away before any message was offered.
        return DeliveryError(
            f"SMTP server {where} refused the connection: {exc.smtp_code} {_text(exc.smtp_error)}",
            transient=True,
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return DeliveryError(f"SMTP server {where} closed the connection: {exc}", transient=True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(where, "answered", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, TimeoutError):
        return DeliveryError(
            f"SMTP server {where} did not answer within {settings.timeout:g}s", transient=True
        )
    if isinstance(exc, smtplib.SMTPException | OSError):
        # Connection refused, DNS failures, TLS handshakes: the server, not the message.
        return DeliveryError(
            f"could not deliver through SMTP server {where}: {type(exc).__name__}: {exc}", transient=True
        )
    return exc


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _by_code(where: str, what: str, code: int, reply: bytes | str) -> DeliveryError:
    permanent = 500 <= code < 600
    return DeliveryError(f"SMTP server {where} {what}: {code} {_text(reply)}", transient=not permanent)


def _refused(where: str, recipients: Mapping[str, tuple[int, bytes]]) -> DeliveryError:
    details = "; ".join(f"{rcpt}: {code} {_text(reply)}" for rcpt, (code, reply) in recipients.items())
    # Only a definite 5xx for every recipient makes it permanent; any 4xx may clear up.
    permanent = all(500 <= code < 600 for code, _ in recipients.values())
    return DeliveryError(f"SMTP server {where} refused the recipient ({details})", transient=not permanent)
