"""Score an archive on Spark: the registered model as MLflow's Spark UDF, one Parquet row per file.

    spark-submit --master 'local[*]' deploy/spark_score.py INPUT OUTPUT [--model URI] [--partitions N]
                 [--batch-size N]
    python deploy/spark_score.py INPUT OUTPUT ...      # the same, with Spark in local[*] mode

INPUT is a folder (read recursively) or a glob, whatever Spark's `binaryFile` source reads: a local path, file:/,
hdfs://, s3a:// (hadoop-aws on Spark's classpath) or s3:// (EMR). OUTPUT is a Parquet folder that must not exist
yet; a local one appears in one rename when every file is scored, a remote one by Spark's commit (`_SUCCESS`).
--model is an MLflow model URI (default models:/brain-tumor-classifier@champion, from MLFLOW_TRACKING_URI or the
project's mlflow.db) logged by this project: `mlflow.pyfunc.spark_udf` loads it in each executor's Python worker
and scores the files in batches of --batch-size (Arrow batches, default 64) with the model's param
`rows="file"`, which answers one row per file (src/braintumor/serving/file_answers.py).

Columns: path, sha256 (of the file's bytes), size_bytes, kind (image, dicom, nifti), pictures, description,
label, probability, one probability per class, novelty and unlike_training (when the model has the score),
averaged_over (1 for a single picture; for a multi-frame DICOM or a volume the number of pictures that show a
head, whose mean is the answer, as `braintumor predict`'s volume summary), frames (one answer per picture, the
rows `braintumor predict` gives) and error (why a file cannot be used; its answer is then null). A bad file never
fails the job.

Executors need the project's Python environment (`pip install ".[spark]"`, which has torch, pydicom, nibabel);
in local mode the workers run this script's Python unless PYSPARK_PYTHON says otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

from braintumor.errors import BrainTumorError
from braintumor.serving.file_answers import classes_of_signature, picture_fields, spark_result_type
from braintumor.serving.requests import ROWS_PARAM

DEFAULT_MODEL = "models:/brain-tumor-classifier@champion"


def result_type(model_uri: str) -> tuple[str, list[str]]:
    """The UDF's Spark SQL type for this model, and its per-picture fields, from its logged signature."""
    from braintumor.tracking.runs import model_signature

    signature = model_signature(model_uri)
    params = [spec.name for spec in signature.params.params] if signature and signature.params else []
    if ROWS_PARAM not in params:
        raise BrainTumorError(
            f"{model_uri} was logged by an older version of this project: its signature has no "
            f"param {ROWS_PARAM!r}, so it cannot answer one row per file as a Spark UDF must. "
            "A model trained (`dvc repro`) with this version has it."
        )
    classes, novelty = classes_of_signature(signature.outputs.input_names())
    return spark_result_type(classes, novelty), list(picture_fields(classes, novelty))


def spark_session():
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    SparkContext._ensure_initialized()  # the JVM: it holds spark-submit's --master and --conf
    master = SparkConf().get("spark.master", "local[*]")
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers need torch and the project: this Python has them
    return SparkSession.builder.appName("braintumor-spark-score").master(master).getOrCreate()


def score(spark, source: str, model_uri: str, *, partitions: int | None = None, batch_size: int = 64):
    """The files under `source`, one row per file, as a Spark DataFrame (lazy: nothing is scored until it is
    written)."""
    import mlflow
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    udf_type, fields = result_type(model_uri)
    try:
        files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(source)
    except AnalysisException as exc:
        raise BrainTumorError(
            f"INPUT {source}: {exc.getMessage() if hasattr(exc, 'getMessage') else exc}. Give "
            "a folder or a glob of scans that Spark can read."
        ) from None
    if partitions is None and spark.conf.get("spark.master").startswith("local"):
        # In local mode MLflow's UDF loads the model in every task (on a cluster, once per executor's Python
        # worker): one task per core, not one per ~30 files as Spark lists them (about 1 s of loading each).
        partitions = spark.sparkContext.defaultParallelism
    if partitions:
        # coalesce merges the file listing's partitions without moving bytes; more partitions need a shuffle
        now = files.rdd.getNumPartitions()
        files = files.coalesce(partitions) if partitions <= now else files.repartition(partitions)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    # the model's code and weights go to each executor; env_manager "local": the executors' Python runs them
    predict = mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=udf_type, env_manager="local", params={ROWS_PARAM: "file"}
    )
    scored = files.select(
        "path",
        F.sha2("content", 256).alias("sha256"),
        F.col("length").alias("size_bytes"),
        predict(F.base64("content")).alias("scored"),
    )
    return scored.select(
        "path",
        "sha256",
        "size_bytes",
        *(f"scored.scan.{name}" for name in ("kind", "pictures", "description")),
        *(F.col("scored.answer")[name].alias(name) for name in [*fields, "averaged_over"]),
        F.col("scored.frames").alias("frames"),
        F.col("scored.scan.error").alias("error"),
    )


def is_local(path: str) -> bool:
    return urlparse(path).scheme in ("", "file")


def write_parquet(table, output: str) -> None:
    """Parquet at `output`: a local folder appears in one rename once it is complete; a remote one by Spark's
    commit protocol (its `_SUCCESS` file says it is complete)."""
    if not is_local(output):
        table.write.mode("errorifexists").parquet(output)
        return
    target = Path(urlparse(output).path if output.startswith("file:") else output).resolve()
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        table.write.mode("errorifexists").parquet(staging.as_uri())
        os.rename(staging, target)  # fails, rather than merging, if OUTPUT appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", metavar="INPUT", help="a folder (recursive) or a glob: local, hdfs://, s3a://")
    parser.add_argument("output", metavar="OUTPUT", help="the Parquet folder to write (must not exist)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"an MLflow model URI (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--partitions",
        type=int,
        help="score in N tasks (default: one per core in local mode, else as Spark lists the files)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="files per batch the model scores (default 64)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download, in a log file
    try:
        if args.partitions is not None and args.partitions < 1:
            raise BrainTumorError(f"--partitions {args.partitions}: give 1 or more")
        if args.batch_size < 1:
            raise BrainTumorError(f"--batch-size {args.batch_size}: give 1 or more")
        if is_local(args.output) and Path(urlparse(args.output).path).exists():
            raise BrainTumorError(f"OUTPUT {args.output} exists; give a new folder (nothing is overwritten)")
        spark = spark_session()
        table = score(spark, args.input, args.model, partitions=args.partitions, batch_size=args.batch_size)
        write_parquet(table, args.output)
        counts = (
            spark.read.parquet(args.output)
            .selectExpr("count(*) AS files", "count(error) AS errors", "sum(pictures) AS pictures")
            .first()
        )
        print(
            f"wrote {args.output}: {counts.files} files, {counts.pictures or 0} pictures scored, "
            f"{counts.errors} files could not be used (their reason is in the column `error`)"
        )
    except BrainTumorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
