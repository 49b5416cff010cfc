"""The log-likelihood tasks' lm-eval class: each question also in its rotated option orders.

lm-eval has no mode that scores a question with its options reordered. This class (named by
``class:`` in the task template) adds it where the documents carry rotated prompts
(``--metadata '{"orders": "cyclic"}'``, ``ORDERS=cyclic``; see
:mod:`propensity_evals.option_orders`):

- one question stays one document: its requests are the original order's k options
  (``idx`` 0..k-1, exactly the requests of an original-order run), then rotation 1's k
  options (``idx`` k..2k-1), and so on, so ``--limit`` counts questions, a group weighs
  questions as before, and the sample log holds every rotation's log-likelihoods;
- each rotated context is built by lm-eval's own ``fewshot_context`` with the arguments it
  used for the original (system instruction, chat template, thinking closure of our model
  classes), so every prompt format works as in an original-order run.

Without rotations (``ORDERS=original``, or a question that keeps its order) it builds the
requests lm-eval's ``ConfigurableTask`` builds. Its ``--cache_requests`` key holds the
documents, rotations included (:mod:`propensity_evals.request_cache_key`).
"""

from __future__ import annotations

import dataclasses

from propensity_evals.request_cache_key import DocumentKeyedTask


class CyclicOrdersTask(DocumentKeyedTask):
    def __init__(self, config: dict | None = None, **kwargs) -> None:
        super().__init__(config=config, **kwargs)
        self._context_arguments: dict = {}

    def fewshot_context(self, doc, num_fewshot, **kwargs):
        # lm-eval builds each document's context right before its requests; the rotations
        # need the same arguments, which construct_requests is not given.
        self._context_arguments = {"num_fewshot": num_fewshot, **kwargs}
        return super().fewshot_context(doc, **self._context_arguments)

    def construct_requests(self, doc: dict, ctx, **kwargs):
        requests = super().construct_requests(doc=doc, ctx=ctx, **kwargs)
        k = len(requests)
        for shift, prompt in enumerate(doc.get("rotations") or [], start=1):
            rotated_doc = {**doc, "prompt": prompt}
            arguments = {**self._context_arguments, "gen_prefix": self.doc_to_prefix(rotated_doc)}
            rotated_ctx = super().fewshot_context(rotated_doc, **arguments)
            for request in super().construct_requests(doc=rotated_doc, ctx=rotated_ctx, **kwargs):
                # The original document, so that the sample log and process_results see one
                # question; idx orders the results rotation by rotation.
                requests.append(dataclasses.replace(request, doc=doc, idx=shift * k + request.idx))
        return requests
