"""In-process mode: the dispatch core and the models in threads of this process."""
