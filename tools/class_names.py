"""Write the class-name files of the benchmark data sets (one name per line, line k = label k) into data_txt/
(``<prefix>classnames.txt`` next to the lists, e.g. ImageNet_LT/ImageNet_LT_classnames.txt).

python -m tools.class_names --inat_categories /path/to/iNat2018/categories.json

* ImageNet-LT: open_clip's IMAGENET_CLASSNAMES (CLIP's cleaned names, in the sorted-WordNet-id order that the
  ImageNet-LT labels use; checked against the shipped test list).
* Places-LT (data_txt/Places_LT_v2, classes relabelled by training frequency): the scene folder of each label in the
  shipped training list, '/' and '_' as spaces ("arena/hockey" -> "arena hockey").
* iNaturalist 2018: the "name" of each category id in the official categories.json of the 2018 competition (labels
  are category ids).
* CIFAR-100: the 100 fine label names of the official meta file (alphabetical = label order); the CIFAR data sets
  also read them from the meta file itself.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR100 = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
            "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
            "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
            "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
            "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
            "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
            "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()


def folder_per_label(list_file: Path, parts: slice) -> dict[int, str]:
    """label -> the path parts ``parts`` of its images (one value per label, checked)."""
    found: dict[int, set[str]] = {}
    for line in list_file.read_text().splitlines():
        path, label = line.rsplit(maxsplit=1)
        found.setdefault(int(label), set()).add("/".join(path.split("/")[parts]))
    assert all(len(v) == 1 for v in found.values()), f"{list_file}: a label spans several folders"
    return {k: next(iter(v)) for k, v in found.items()}


def write(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(names) + "\n")
    print(f"wrote {path} ({len(names)} names)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tools.class_names``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inat_categories", help="categories.json of iNaturalist 2018 (official annotations)")
    args = parser.parse_args(argv)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = folder_per_label(ROOT / "data_txt/ImageNet_LT/ImageNet_LT_test.txt", slice(1, 2))
    assert [wnids[i] for i in range(1000)] == sorted(wnids.values()), "ImageNet-LT labels are not in WordNet-id order"
    write(ROOT / "data_txt/ImageNet_LT/ImageNet_LT_classnames.txt", list(IMAGENET_CLASSNAMES))
    scenes = folder_per_label(ROOT / "data_txt/Places_LT_v2/Places_LT_train.txt", slice(2, -1))
    write(ROOT / "data_txt/Places_LT_v2/Places_LT_classnames.txt",
          [scenes[i].replace("/", " ").replace("_", " ") for i in range(len(scenes))])
    write(ROOT / "data_txt/CIFAR100/CIFAR100_classnames.txt", CIFAR100)
    if args.inat_categories:
        categories = json.loads(Path(args.inat_categories).read_text())
        by_id = {int(c["id"]): c["name"] for c in categories}
        write(ROOT / "data_txt/iNaturalist18/iNaturalist18_classnames.txt", [by_id[i] for i in range(len(by_id))])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
