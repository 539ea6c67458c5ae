rule report:
    input:
        unpack(report_inputs),
    output:
        md="paper_tables/reproduction.md",
        html=report(
            "paper_tables/reproduction.html",
            caption="../report/reproduction.rst",
            category="Reproduction report",
        ),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        results=report_results,
        digests=report_digests,
    shell:
        "qgen report --paper {input.paper:q} --notes {input.notes:q} {params.results}"
        " --templates {input.templates:q} --out {output.md:q} {output.html:q} > {log:q} 2>&1"
