"""E-mail over SMTP (``smtp://host:port``, ``smtps://user:password@host:port``; STARTTLS when offered)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import unquote, urlsplit

from tracker.alerting.base import DeliveryError, Notice, pending_words


class EmailChannel:
    name = "email"

    def __init__(self, url: str, to: str, sender: str = "tracker@localhost", timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.secure = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.secure else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.to = [address.strip() for address in to.split(",") if address.strip()]
        self.sender = sender
        self.timeout = timeout

    def message(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Subject"] = f"[tracker] {notice.title}"
        message["Date"] = format_datetime(notice.created_at)
        # The idempotency key rides in the Message-ID: a redelivery after a crash is recognisably the same mail.
        message["Message-ID"] = make_msgid(idstring=notice.key.replace(":", "."), domain="tracker")
        message["X-Tracker-Notice"] = notice.key
        lines = [notice.title, "", f"Provider: {notice.provider}"]
        if notice.customer_id is not None:
            lines.append(f"Customer: {notice.provider_customer_id} (tracker id {notice.customer_id}"
                         + (f", reference {notice.reference})" if notice.reference else ")"))
            if notice.pending_seconds is not None:
                lines.append(f"Pending for: {pending_words(notice.pending_seconds)}")
        if notice.advice:
            lines += ["", f"What to do: {notice.advice}"]
        message.set_content("\n".join(lines) + "\n")
        return message

    def _send(self, notice: Notice) -> None:
        message = self.message(notice)
        try:
            if self.secure:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                       context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if not self.secure and smtp.has_extn("starttls"):
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.user and self.password:
                    smtp.login(self.user, self.password)
                smtp.send_message(message, to_addrs=self.to)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"email: SMTP {exc.smtp_code}", retryable=exc.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"email: {type(exc).__name__}") from None

    async def send(self, notice: Notice) -> None:
        await asyncio.to_thread(self._send, notice)
