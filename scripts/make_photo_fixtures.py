#!/usr/bin/env python3
"""Re-create data/photos/ from scikit-image's sample data (CC0 / public domain).

    pip download --no-deps scikit-image -d /tmp/skw && cd /tmp/skw && unzip -o *.whl 'skimage/data/*'
    pip install pillow
    python3 scripts/make_photo_fixtures.py /tmp/skw/skimage/data
"""
import os
import sys

from PIL import Image

src = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "..", "data", "photos")
os.makedirs(out, exist_ok=True)
for name in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png"]:
    im = Image.open(os.path.join(src, name))
    base = os.path.splitext(name)[0]
    im.convert("L" if im.mode == "L" else "RGB").save(os.path.join(out, base + ".jpg"), quality=90)
cmyk = Image.open(os.path.join(src, "chelsea.png")).convert("RGB").resize((150, 100)).convert("CMYK")
cmyk.save(os.path.join(out, "chelsea_cmyk.jpg"), quality=90)
