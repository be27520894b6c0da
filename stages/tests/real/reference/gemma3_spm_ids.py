"""Expected Gemma-3 token ids for `families::gemma3_tokenizer_matches_sentencepiece`.

Google's own SentencePiece implementation on the vocabulary of the Gemma-3-270m GGUF
file (pieces, scores and types as the file stores them), BPE with byte fallback, no
dummy prefix, whitespace escaped as the original Gemma tokenizer does. The texts hold
no user-defined piece other than newlines, whose handling (matched whole on the raw
text) llama.cpp and Hugging Face share, so no pre-partition is needed.

Run: pip install gguf sentencepiece protobuf; python gemma3_spm_ids.py GGUF
"""
import json
import sys

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

TEXTS = [
    "Consider the following claim: Fox 2000 Pictures released the film Soul Food. Is this claim true or false. The claim is",
    "Premise: Anna knows that the cat is asleep.\n\nHypothesis: The cat is asleep.\nRelation:",
    "Ünïcödé café — naïve façade, 東京 and 🙂!",
    "x = [1, 2, 3]; y = {'a': 10.5}",
    "The answer is",
]

r = gguf.GGUFReader(sys.argv[1])
toks = r.fields["tokenizer.ggml.tokens"].contents()
scores = r.fields["tokenizer.ggml.scores"].contents()
types = r.fields["tokenizer.ggml.token_type"].contents()
m = pb.ModelProto()
m.trainer_spec.model_type = pb.TrainerSpec.BPE
m.trainer_spec.byte_fallback = True
m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
m.normalizer_spec.name = "identity"
m.normalizer_spec.add_dummy_prefix = False
m.normalizer_spec.remove_extra_whitespaces = False
m.normalizer_spec.escape_whitespaces = True
kinds = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
for t, s, ty in zip(toks, scores, types):
    p = m.pieces.add()
    p.piece, p.score = t, float(s)
    p.type = getattr(pb.ModelProto.SentencePiece, kinds[int(ty)])
sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
for t in TEXTS:
    print(json.dumps(t, ensure_ascii=False), sp.encode(t))
