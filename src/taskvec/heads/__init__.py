"""Attention-head work: head sites, head attribution (AIE) and function vectors (Todd et al. 2024).

- :mod:`taskvec.models.head_sites` finds every block's attention output projection, head count and
  post-attention norm; heads are read and edited as sites (``Site(layer, head=j)``) through an executor;
- :mod:`.examples` builds clean and shuffled-label ICL examples (``attribution_examples``: the one recipe of
  ``run``, ``heads`` and ``extract``) and the gold answers' first tokens;
- :mod:`.attribution` computes mean head outputs and each head's average indirect effect (executor calls);
- :mod:`.function_vector` builds and applies function vectors;
- :mod:`.selection` chooses the layer, k and scale on dev queries.
"""

from taskvec.heads.attribution import HeadAttribution, MeanHeadOutputs, average_aie, head_attribution, top_heads
from taskvec.heads.examples import IclExample, attribution_examples, sample_icl_examples, shuffled_examples
from taskvec.heads.function_vector import FunctionVector, apply_function_vector, function_vector, random_like
from taskvec.heads.selection import select_function_vector
from taskvec.models.head_sites import HeadSite, HeadSiteError, head_sites

__all__ = [
    "FunctionVector",
    "HeadAttribution",
    "HeadSite",
    "HeadSiteError",
    "IclExample",
    "MeanHeadOutputs",
    "apply_function_vector",
    "attribution_examples",
    "average_aie",
    "function_vector",
    "head_attribution",
    "head_sites",
    "random_like",
    "sample_icl_examples",
    "select_function_vector",
    "shuffled_examples",
    "top_heads",
]
