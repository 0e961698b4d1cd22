"""``make demo`` (``python -m deploy.demo``): the whole service on synthetic data, in minutes.

Makes a small set of synthetic drone RF spectrograms (``spectra``), starts the service
(``rfuavd all`` on a free loopback port, home ``./var/demo``), splits the data, trains resnet18 at
32 px for two epochs with the ``rfuav logs -f`` progress bar, runs an inference job over the test
split, deploys the trained model (2 replicas) and sends it predictions, prints where to look,
and stops the service (SIGTERM; also on Ctrl-C). ``run`` is the script, ``service`` the service's
process.
"""
