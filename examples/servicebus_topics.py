"""Service Bus topics with SQL filters, on the in-memory engine (``memory://``).

The same ``ServiceBusManager`` API takes ``sqlite:///...``, ``nats://...`` or an Azure
``Endpoint=sb://...`` connection string. A topic ``orders`` has three subscriptions:

* ``big_eu``: the SQL filter ``region = 'EU' AND amount > 1000``;
* ``vip``: a second rule added to a subscription (a message matches when ANY rule does):
  ``customer LIKE 'ACME%'`` or ``priority IN ('high', 'urgent')``;
* ``audit``: no filter, every message.

Scalar top-level fields of the sent dict are the user properties the filters see. Each
subscription is received in peek-lock mode and every message completed.

Run: ``.venv/bin/python examples/servicebus_topics.py``
"""

from __future__ import annotations

import asyncio

from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager

ORDERS = [
    {"order": 1, "region": "EU", "amount": 2500, "customer": "Globex", "priority": "low"},
    {"order": 2, "region": "US", "amount": 9000, "customer": "ACME Corp", "priority": "low"},
    {"order": 3, "region": "EU", "amount": 300, "customer": "Initech", "priority": "urgent"},
    {"order": 4, "region": "APAC", "amount": 50, "customer": "Umbrella", "priority": "low"},
]


async def main() -> None:
    async with ServiceBusManager(connection_string="memory://") as sb:
        await sb.create_topic("orders")
        await sb.create_subscription("orders", "big_eu", "region = 'EU' AND amount > 1000")
        await sb.create_subscription("orders", "vip", "customer LIKE 'ACME%'")
        await sb.add_rule("orders", "vip", "urgent", "priority IN ('high', 'urgent')")
        await sb.create_subscription("orders", "audit")

        for order in ORDERS:
            await sb.send_to_topic("orders", order)

        for name in ("big_eu", "vip", "audit"):
            got = await sb.receive_messages("orders", name, max_message_count=10, max_wait_time=1)
            for message in got:
                await sb.complete_message(message)
            print(f"{name:>6}: orders {sorted(m.content['order'] for m in got)}")


if __name__ == "__main__":
    asyncio.run(main())
