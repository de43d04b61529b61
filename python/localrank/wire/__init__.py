"""The wire contract: what leaves the device, as closed JSON Schemas (``schemas/``) with the
builders the device uses and the validation the server uses (:mod:`localrank.wire.reports`)."""
