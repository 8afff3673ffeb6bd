"""Input/output: the Parquet schemas, KLARF parsing, and the object store's parts.

``bucket`` opens the store; ``paths`` lists a date's raw images and reads ids from their paths;
``klarf_join`` adds ids and die positions from a KLARF; ``confirmed`` reads the engineers' labels;
``quarantine`` records unusable inputs; ``partitions`` reads and rewrites the predictions;
``fetch`` reads the bytes of many URIs at once; ``tables`` is their shared Parquet folder reader.
"""
