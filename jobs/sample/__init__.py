"""`mrgen sample`: one bundle, one mask, N candidates, in this process (no Ray) — the way to try a bundle.

* ``config.py``  ``SampleConfig`` (the flags)
* ``run.py``     ``main(config)``: loads the bundle (ours or the official release's folder), builds the prompt with
                 the bundle's conventions, writes ``candidate_000.png`` … and ``candidates.json``
"""
