"""Idempotency keys belong to a queue, on every store that has them: the same key in two queues
makes two tasks, and a push answers with the id of its own queue's task.

Ids are compared within a queue only: a store may number each queue on its own (pgmq)."""

from __future__ import annotations

import asyncio

from apalis_cli.backend import Capability

from .conftest import Calls, Harness


async def test_the_same_key_in_two_queues_makes_two_tasks(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.IDEMPOTENCY)
    emails = harness.backend()
    invoices = harness.backend(queue=f"{harness.queue}_other")
    in_emails = await emails.push({"queue": "emails"}, idempotency_key="order-7")
    in_invoices = await invoices.push({"queue": "invoices"}, idempotency_key="order-7")

    # Pushed again, each queue answers with its own task, whichever queue used the key last.
    assert await emails.push({"queue": "emails", "copy": 2}, idempotency_key="order-7") == in_emails
    assert await invoices.push({"queue": "invoices", "copy": 2}, idempotency_key="order-7") == in_invoices
    assert await emails.push({"queue": "emails", "copy": 3}, idempotency_key="order-7") == in_emails
    assert await invoices.push({"queue": "invoices", "copy": 3}, idempotency_key="order-7") == in_invoices
    if harness.store.capabilities.has(Capability.INSPECT):
        for backend, task_id, queue in ((emails, in_emails, "emails"), (invoices, in_invoices, "invoices")):
            stored = await harness.inspector(backend).get(task_id)
            assert stored is not None, f"the id a push into {queue} answered is not in {queue}"
            assert backend.codec.decode(stored.args) == {"queue": queue}

    email_worker = await harness.worker(emails, calls.handler(worker="emails"), name="emails").start()
    invoice_worker = await harness.worker(invoices, calls.handler(worker="invoices"), name="invoices").start()
    await harness.wait_until(lambda: len(calls.calls) >= 2, what="one task in each queue to run")
    await asyncio.sleep(0.3)  # a duplicate would have been claimed by now
    await email_worker.stop()
    await invoice_worker.stop()

    assert sorted((c.worker, c.id, c.args["queue"]) for c in calls.calls) == sorted(
        [("emails", in_emails, "emails"), ("invoices", in_invoices, "invoices")]
    ), "each queue runs its own task for the key, once"
    assert all("copy" not in c.args for c in calls.calls), "the first push of a key wins in each queue"


async def test_keys_used_in_a_different_order_in_two_queues_answer_per_queue(harness: Harness) -> None:
    harness.require(Capability.IDEMPOTENCY)
    first = harness.backend()
    second = harness.backend(queue=f"{harness.queue}_other")
    a = await first.push({"n": 1}, idempotency_key="k-1")
    b = await second.push({"n": 2}, idempotency_key="k-2")
    c = await second.push({"n": 1}, idempotency_key="k-1")
    d = await first.push({"n": 2}, idempotency_key="k-2")
    assert a != d, "two keys in one queue are two tasks"
    assert b != c, "two keys in one queue are two tasks"
    assert [await first.push({"n": n}, idempotency_key=f"k-{n}") for n in (1, 2)] == [a, d]
    assert [await second.push({"n": n}, idempotency_key=f"k-{n}") for n in (1, 2)] == [c, b]
