"""Azure Service Bus's API (topics, subscriptions, SQL filter rules) on every engine, and on
Azure itself through the official SDK."""
