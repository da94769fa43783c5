"""``homeward bench …``: speed shown as ratios against a reference measured in the same run, never as timed tests.

Each benchmark is a verb function returning a dict of figures; the CLI prints it as one JSON object on the last
line. ``crawl`` (``ray_jobs/bench/crawl.py``): pages/s and items/s through the full item pipeline against a local
mirror, beside ``scrapy bench`` run in the same process tree.
"""
