"""Webhooks (PutWebhook & co.) and the endpoint that receives them (and V2 triggers).

- :mod:`app.webhooks.store`: the webhooks' own event stream (who put / deleted / registered
  which webhook), folded on read, and each webhook's capped delivery log.
- :mod:`app.webhooks.ops`: the five API operations.
- :mod:`app.webhooks.receive`: ``POST /webhooks/<id-or-name>`` and ``POST /triggers/<pipeline>``.
- The matching itself is pure: :mod:`app.domain.triggers`.
"""
