"""What happens after a job ends: webhooks and emails, retried and recorded.

When a job reaches a final status, each of its triggers either matches (``always``;
``success`` for a successful job; ``failure`` for anything else: failed, timeout,
cancelled) and is delivered, or is marked ``skipped``. A delivery is tried up to
``jobs.trigger_attempts`` times with doubling pauses (``retries.deliveries``); every
attempt is recorded
(``trigger_deliveries``) and the trigger ends ``delivered`` or ``failed``. Nothing
here touches the job's own status: a receiver that is down never fails a build.

Webhooks POST the job (``JobOut`` JSON), signed the way builds.sr.ht signs its
payloads, but with a shared-key HMAC rather than an Ed25519 key pair::

    X-Payload-Nonce:     random, unique per delivery
    X-Payload-Signature: base64(HMAC-SHA256(owner's webhook key, body + nonce))

The owner fetches their key from ``GET /api/v1/webhook-key``. Emails go to the
configured SMTP server (``jobs.smtp_*``) from ``jobs.smtp_from``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import secrets
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

import anyio
import anyio.to_thread
import httpx
import sqlalchemy as sa

from nixfarm.config import JobSettings
from nixfarm.db.engine import Database
from nixfarm.db.models import Trigger, TriggerDelivery
from nixfarm.retries import deliveries, retried
from nixfarm.wire.jobs import JobOut

log = logging.getLogger("nixfarm.builds.triggers")


def matches(condition: str, status: str) -> bool:
    return condition == "always" or (condition == "success") == (status == "success")


def sign(key: bytes, body: bytes, nonce: str) -> str:
    """The ``X-Payload-Signature`` of ``body`` sent with ``nonce``."""
    return base64.b64encode(hmac.new(key, body + nonce.encode(), hashlib.sha256).digest()).decode()


class TriggerService:
    def __init__(self, db: Database, settings: JobSettings,
                 webhook_key: Callable[[int], bytes]) -> None:
        self.db = db
        self.settings = settings
        self._webhook_key = webhook_key

    async def fire(self, job: JobOut, owner_id: int) -> None:
        """Deliver (or skip) every pending trigger of the ended ``job``."""
        async with self.db.session() as s:
            triggers = list(await s.scalars(sa.select(Trigger).where(
                Trigger.job_id == job.id, Trigger.status == "pending").order_by(Trigger.id)))
            due = []
            for trigger in triggers:
                if matches(trigger.condition, job.status):
                    trigger.status = "sending"
                    due.append((trigger.id, trigger.action, dict(trigger.details)))
                else:
                    trigger.status = "skipped"
        for trigger_id, action, details in due:
            await self._deliver(trigger_id, action, details, job, owner_id)

    async def _deliver(self, trigger_id: int, action: str, details: dict[str, str],
                       job: JobOut, owner_id: int) -> None:
        numbers = itertools.count(1)

        async def attempt() -> bool:
            number = next(numbers)
            try:
                if action == "webhook":
                    ok, detail = await self._webhook(details["url"], job, owner_id)
                else:
                    ok, detail = await anyio.to_thread.run_sync(self._email, details, job)
            except Exception as e:  # any failure of the receiver is recorded, not raised
                ok, detail = False, f"{type(e).__name__}: {e}"
            async with self.db.session() as s:
                s.add(TriggerDelivery(trigger_id=trigger_id, attempt=number, ok=ok,
                                      detail=detail[:2000]))
            if not ok:
                log.warning("trigger %d of job %d, attempt %d failed: %s",
                            trigger_id, job.id, number, detail)
            return ok

        policy = deliveries(self.settings.trigger_attempts, self.settings.trigger_retry_seconds)
        ok = await retried(policy, attempt)
        async with self.db.session() as s:
            await s.execute(sa.update(Trigger).where(Trigger.id == trigger_id)
                            .values(status="delivered" if ok else "failed"))

    async def _webhook(self, url: str, job: JobOut, owner_id: int) -> tuple[bool, str]:
        body = job.model_dump_json().encode()
        nonce = secrets.token_hex(16)
        headers = {
            "Content-Type": "application/json",
            "X-Payload-Nonce": nonce,
            "X-Payload-Signature": sign(self._webhook_key(owner_id), body, nonce),
            "User-Agent": "nixfarm",
        }
        async with httpx.AsyncClient(timeout=self.settings.trigger_timeout_seconds) as client:
            response = await client.post(url, content=body, headers=headers)
        return response.is_success, f"HTTP {response.status_code}"

    def _email(self, details: dict[str, str], job: JobOut) -> tuple[bool, str]:
        cfg = self.settings
        if not cfg.smtp_host:
            return False, "no SMTP server is configured (jobs.smtp_host)"
        message = EmailMessage()
        message["From"] = cfg.smtp_from
        if details.get("to"):  # builds.sr.ht takes to, cc or both
            message["To"] = details["to"]
        if details.get("cc"):
            message["Cc"] = details["cc"]
        if details.get("in_reply_to"):
            message["In-Reply-To"] = details["in_reply_to"]
        message["Message-ID"] = make_msgid(domain=cfg.smtp_from.rpartition("@")[2] or None)
        message["Subject"] = f"[nixfarm] job #{job.id} {job.status}"
        lines = [f"Job #{job.id} {job.status}" + (f": {job.reason}" if job.reason else ""),
                 "", job.url, ""]
        lines += [f"  {t.status:8} {t.name}" for t in job.tasks]
        message.set_content("\n".join(lines) + "\n")
        recipients = [a for _, a in getaddresses(
            [details.get("to", ""), details.get("cc", "")]) if a]
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port,
                          timeout=cfg.trigger_timeout_seconds) as smtp:
            if cfg.smtp_starttls:
                smtp.starttls()
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, cfg.smtp_password)
            refused = smtp.send_message(message, to_addrs=recipients)
        if refused:
            return False, f"refused recipients: {', '.join(refused)}"
        return True, f"sent to {', '.join(recipients)}"
