"""Loaders of the public data sets and the RFM model computed from transactions.

`hillstrom` reads the MineThatData e-mail experiment, `cdnow` the CDNOW purchase log,
`checksums` holds their published digests, and `rfm` turns any transaction table into
recency / frequency / monetary scores and named segments. The modules import pandas and
numpy at their top, so this package imports none of them: `import nba.data` stays cheap.
"""
