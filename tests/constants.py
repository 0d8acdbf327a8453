"""Constants the tests share: published figures of the public data sets and fixed seeds."""

SEED = 7

# ../shared/data/README.md
HILLSTROM_ROWS = 64_000
HILLSTROM_ARM_MEANS = {
    # arm: (visit, conversion, spend)
    "Mens E-Mail": (0.1828, 0.0125, 1.42),
    "Womens E-Mail": (0.1514, 0.0088, 1.08),
    "No E-Mail": (0.1062, 0.0057, 0.65),
}
HILLSTROM_ZIP_SHA256 = "295d868d600270624f32a70e548489e13b1266d987e5e76a27c3a6665e512dd1"
HILLSTROM_CSV_SHA256 = "0e5893329d8b93cefecc571777672028290ab69865718020c78c7284f291aece"
CDNOW_GZ_SHA256 = "550275156104d6ba6bdf3b5a2d1a379682168f83734fdc6e3fd0392565f82231"
CDNOW_ROWS = 69_659
CDNOW_CUSTOMERS = 23_570
