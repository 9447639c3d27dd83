"""OpenAI's Files and Batch API over the bulk lane: the stored records (`records`), the checks and answers
of batch lines (`lines`), and the driver that turns a batch into bulk RQ jobs and collects them (`driver`).
See docs/batch-api.md."""
