"""`phenaki-prepare`: web-crawl image-text and video-text data -> prepared record shards.

`formats` reads the inputs, `examples` turns an item into examples, `pipeline` runs both on
Apache Beam and writes the shards (the record layout is `phenaki_jax.data.records`).
"""
