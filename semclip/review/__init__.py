"""The review loop: which predictions an engineer should look at, and their decisions back.

* :mod:`~semclip.review.reasons`: why a prediction row needs review (low confidence, a small
  top-1/top-2 margin, a mask that disagrees with the class, a KLARF class code nobody mapped);
* :mod:`~semclip.review.sampling`: the order engineers see them in (uncertainty first,
  interleaved over reason and class, so a capped batch covers every kind of doubt);
* :mod:`~semclip.review.export`: ``review/date=<D>/`` in the bucket (index, image copies,
  mask overlays);
* :mod:`~semclip.review.importer`: the engineers' CSV into ``confirmed/`` for the next refit.
"""
