"""Load an InternVL original-layout folder with InternVL's own code and compare its logits to a fixture's.

Runs in the fixture environment (README.md), not in vidtune's: InternVL's model code was written for
transformers 4.x. The folder (for example one that vidtune's merge wrote back in the original layout) is copied
to a temporary folder, InternVL's .py files from the checkout are added as a Hub folder has them, and it is
loaded with `AutoModel.from_pretrained(..., trust_remote_code=True)` in fp32. It is run on the fixture's stored
input (input_ids, attention_mask, image_flags, shared pixel values); the max abs difference to the stored logits
is printed, and the exit status is 1 when it exceeds --tolerance.

    python check_original_layout.py FOLDER FIXTURE --internvl /path/to/InternVL
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import hub_copy  # noqa: E402  (the same Hub-folder copy the fixtures were made with)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folder', help='an InternVL original-layout folder (config.json, safetensors, tokenizer)')
    parser.add_argument('fixture', help='a fixture folder, or its name under tests/data/internvl_original/')
    parser.add_argument('--internvl', required=True, help='root of the InternVL checkout the fixtures were made with')
    parser.add_argument('--tolerance', type=float, default=1e-4)
    args = parser.parse_args()

    fixture = Path(args.fixture)
    if not fixture.is_dir():  # a fixture's name
        fixture = Path(__file__).resolve().parent / args.fixture
    meta = json.loads((fixture / 'reference.json').read_text())
    if transformers.__version__ != meta['transformers_version']:
        sys.exit(f'{fixture}: made with transformers {meta["transformers_version"]}, this env has '
                 f'{transformers.__version__}; use the environment README.md names for it')
    ref = load_file(fixture / 'reference.safetensors')
    pixel_values = load_file(fixture / meta['pixel_values'])['pixel_values']

    hub = hub_copy(args.folder, args.internvl, meta['internvl_code'])
    try:
        model = transformers.AutoModel.from_pretrained(hub, trust_remote_code=True, torch_dtype=torch.float32)
        model = model.float().eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(hub, trust_remote_code=True, use_fast=False)
        model.img_context_token_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')  # as chat() sets it
        with torch.no_grad():
            logits = model(pixel_values=pixel_values, input_ids=ref['input_ids'], attention_mask=ref['attention_mask'],
                           image_flags=ref['image_flags'], return_dict=True).logits.float()
    finally:
        shutil.rmtree(hub)
    logits = logits[:, meta['logits_start']:]
    if logits.shape != ref['logits'].shape:
        sys.exit(f'{args.folder}: logits shape {tuple(logits.shape)} != fixture {tuple(ref["logits"].shape)}')
    diff = float((logits - ref['logits']).abs().max())
    print(f'{args.folder} vs {fixture.name}: max abs logit difference {diff:.3g}')
    sys.exit(0 if diff <= args.tolerance else 1)


if __name__ == '__main__':
    main()
