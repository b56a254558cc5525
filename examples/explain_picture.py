"""Draw examples/explain.jpg: two scikit-image photos and imagenet-cnn's occlusion maps of them,
computed by the server's own explain steps with onnxruntime's answers (grid 8, PNG side 256).

    BENTOML_HOME=$PWD/model_store .venv/bin/python examples/explain_picture.py
"""

import io

import onnxruntime as ort
import skimage.data
from PIL import Image

from service.core.model_settings import ModelSettings
from service.processing.occlusion import heatmap_png
from service.store.specs import latest_specs
from service.tasks.explaining import Occlusion
from service.tasks.image_classification import image_pixels

specs = latest_specs()
panels = []
for name, image in (
    ("imagenet-cnn", skimage.data.coffee()),
    ("imagenet-cnn", skimage.data.chelsea()),
):
    spec = specs[name]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    pixels = image_pixels(spec, ModelSettings(), buffer.getvalue())
    session = ort.InferenceSession(str(spec.graph_path("model")))
    occ = Occlusion.of(pixels, 8)
    answer, drops = occ.explained(spec, session.run(["probabilities"], {"image": occ.copies})[0])
    print(answer["target"])
    png = Image.open(io.BytesIO(heatmap_png(occ.pixels, drops, 256)))
    panels += [Image.fromarray(pixels).resize((256, 256)), png.convert("RGB")]
sheet = Image.new("RGB", (256 * len(panels) + 8 * (len(panels) - 1), 256), "white")
for i, p in enumerate(panels):
    sheet.paste(p, (i * 264, 0))
sheet.save("examples/explain.jpg", quality=85)
