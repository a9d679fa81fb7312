"""From raw Amazon Review files, or any item-text and image table, to the files recbole-missrec reads.

Run ``python -m dataset_preprocess --help``; the layout is described in ``layout`` and README.md.
"""
