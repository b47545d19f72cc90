"""`perly`: runs the Stripe source into the Perly destination outside Airbyte.

`perly sync` pipes `source-perly-stripe read` into `destination-perly write` and keeps only the state
the destination acknowledged (pipeline.py); `perly schedule` runs one sync through PyAirbyte, for
cron (schedule.py). Both run the installed connectors as programs and import neither of them, so
neither connector depends on this package.
"""
