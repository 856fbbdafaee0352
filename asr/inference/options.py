"""How to decode: one frozen set of options, checked once, and the scorers it asks for."""

from __future__ import annotations

from dataclasses import dataclass

from asr.data.tokenizer import Tokenizer
from asr.decoding.scorers import Scorer

METHODS = (
    "greedy",
    "modified_beam_search",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "attention_beam_search",
    "attention_rescoring",
    "edatt",
    "alignatt",
)
# Simultaneous policies on the attention decoder: decode as audio arrives, commit words by policy.
SIMULTANEOUS_METHODS = ("edatt", "alignatt")
# The methods the token LM, lexicon and word LM scorers plug into.
SCORER_METHODS = ("modified_beam_search", "attention_beam_search")
DEFAULT_LM_SCALE = 0.5  # best on the synth dev set
DEFAULT_LM_BONUS = 1.5  # best on the synth dev set
DEFAULT_OOV_PENALTY = 6.0  # best of 1.5, 3, 6, 10 on 600 synth dev utterances
DEFAULT_WORD_LM_SCALE = 0.3
DEFAULT_WORD_BONUS = 1.5


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings (whisper's ``DecodingOptions`` in spirit).

    Attributes:
        method: one of :data:`METHODS`.
        beam: hypotheses kept per utterance by the beam searches.
        chunk_size, left_context_frames: decode a causal model chunk by chunk, in the encoder's own frames
            (``encoder.chunk_frame_ms``: 20 ms for the Zipformer, 40 ms for the Conformer and Transformer);
            ``left_context_frames`` None keeps the model's.
        lm, lm_scale, lm_bonus, lm_final: an ARPA n-gram LM over the model's tokens, shallow-fused into
            modified beam search (:class:`asr.decoding.TokenLmScorer`).
        lexicon, oov_penalty: word lists or texts; modified beam search subtracts ``oov_penalty`` per
            hypothesis word not in them (:class:`asr.decoding.LexiconScorer`).
        word_lm, word_lm_scale, word_bonus: an ARPA word n-gram LM fused at word ends; needs ``lexicon``
            (:class:`asr.decoding.WordLmScorer`).
        ctc_weight: with an attention decoder, the weight λ of the CTC score: joint CTC/attention scoring in
            ``attention_beam_search``, the CTC log-likelihood term in ``attention_rescoring``.
        first_pass_weight: in ``attention_rescoring`` (an n-best list of ``beam`` transducer hypotheses
            from modified beam search, rescored by the attention decoder), the weight of their transducer score.
        step_ms, alpha, lambda_frames, align_frames: the simultaneous methods (:mod:`asr.decoding.simultaneous`):
            every ``step_ms`` of audio, ``edatt`` commits the tokens before the first whose cross-attention
            mass on the last ``lambda_frames`` encoder frames is >= ``alpha``; ``alignatt`` those before the
            first whose most-attended frame is among the last ``align_frames``. Whole words only.
    """

    method: str = "greedy"
    beam: int = 4
    chunk_size: int | None = None
    left_context_frames: int | None = None
    lm: str | None = None
    lm_scale: float = DEFAULT_LM_SCALE
    lm_bonus: float = DEFAULT_LM_BONUS
    lm_final: bool = True
    lexicon: tuple[str, ...] = ()
    oov_penalty: float = DEFAULT_OOV_PENALTY
    word_lm: str | None = None
    word_lm_scale: float = DEFAULT_WORD_LM_SCALE
    word_bonus: float = DEFAULT_WORD_BONUS
    ctc_weight: float = 0.0
    first_pass_weight: float = 1.0
    step_ms: float = 200.0
    alpha: float = 0.6
    lambda_frames: int = 2
    align_frames: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.lexicon, str):  # one file given as a string, not its characters
            object.__setattr__(self, "lexicon", (self.lexicon,))
        else:
            object.__setattr__(self, "lexicon", tuple(str(p) for p in self.lexicon))
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the option for settings no search can run."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if int(self.beam) != self.beam or self.beam < 1:
            raise ValueError(f"beam must be a positive integer, got {self.beam}")
        if self.chunk_size is not None and (int(self.chunk_size) != self.chunk_size or self.chunk_size <= 0):
            raise ValueError(f"chunk_size must be a positive number of encoder frames, got {self.chunk_size}")
        if self.left_context_frames is not None and self.chunk_size is None:
            raise ValueError("left_context_frames needs chunk_size")
        for name in ("lm_scale", "oov_penalty", "word_lm_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        beam_only = {"lm": self.lm is not None, "lexicon": bool(self.lexicon), "word_lm": self.word_lm is not None}
        for name, given in beam_only.items():
            if given and self.method not in SCORER_METHODS:
                raise ValueError(f"{name} needs method {' or '.join(SCORER_METHODS)} (got {self.method})")
        if self.step_ms <= 0:
            raise ValueError(f"step_ms must be > 0, got {self.step_ms}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        for name in ("lambda_frames", "align_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.method in SIMULTANEOUS_METHODS and self.chunk_size is not None:
            raise ValueError(f"chunk_size is for the transducer; method {self.method} steps by step_ms")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.word_lm is not None and not self.lexicon:
            raise ValueError("word_lm needs a lexicon (it tells where words end; oov_penalty 0 for no penalty)")


def build_scorers(options: DecodingOptions, tokenizer: Tokenizer) -> list[Scorer]:
    """The scorers ``options`` ask for, their files read against the model's token inventory.

    Raises:
        ValueError: a file that cannot be read or does not fit the tokens; the message names the option.
    """
    from asr.decoding.lexicon import Lexicon
    from asr.decoding.scorers import LexiconScorer, TokenLmScorer, WordLmScorer
    from asr.lm import NgramLM

    pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    scorers: list[Scorer] = []
    if options.lm is not None:
        try:
            lm = NgramLM.load_arpa(options.lm, pieces)
        except (OSError, ValueError) as error:
            raise ValueError(f"lm: {error}") from None
        scorers.append(TokenLmScorer(lm, options.lm_scale, options.lm_bonus, options.lm_final))
    if options.lexicon:
        try:
            lexicon = Lexicon.from_files(options.lexicon, pieces)
        except (OSError, ValueError) as error:
            raise ValueError(f"lexicon: {error}") from None
        if options.oov_penalty > 0:
            scorers.append(LexiconScorer(lexicon, options.oov_penalty))
        if options.word_lm is not None:
            try:
                word_lm = NgramLM.load_arpa_words(options.word_lm)
            except (OSError, ValueError) as error:
                raise ValueError(f"word_lm: {error}") from None
            scorers.append(WordLmScorer(word_lm, lexicon, options.word_lm_scale, options.word_bonus))
    return scorers
