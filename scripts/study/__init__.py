"""The loop-count study's report (`python -m scripts.loop_study report RUNS_DIR`), one job per
module: `cells` reads each run folder into a cell, `compute` gives its tokens, FLOPs and size,
`stats` holds the statistics, `tables` summarises the cells over seeds, `answers` answers the
study's questions, `render` writes the Markdown, `plots` the figures, `report` puts them together.
"""
