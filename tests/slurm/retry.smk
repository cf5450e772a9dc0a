# Two-job workflow for tests/test_slurm.py: `flaky` fails on its first attempt only, `broken` always
# fails. Run through the SLURM profiles with --retries 1 --keep-going: flaky succeeds on the retry,
# broken fails twice and is reported with its rule log and its SLURM log.


rule all:
    input:
        "flaky.txt",
        "broken.txt",


rule flaky:
    output:
        "flaky.txt",
    log:
        "logs/flaky.log",
    resources:
        try_no=lambda wildcards, attempt: attempt,
    shell:
        "echo 'flaky: attempt {resources.try_no}' >> {log};"
        " test {resources.try_no} -ge 2 && echo ok > {output}"


rule broken:
    output:
        "broken.txt",
    log:
        "logs/broken.log",
    shell:
        "echo 'broken: deliberate failure' >> {log}; exit 3"
