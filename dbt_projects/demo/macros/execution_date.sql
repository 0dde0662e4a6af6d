{#
  The run's execution date as a SQL date literal.

  mage_dbt passes it as --vars '{execution_date: "YYYY-MM-DD"}'. The value is checked at compile
  time so that a malformed date fails with a readable message instead of a warehouse cast error.
#}
{% macro execution_date() -%}
  {%- set value = var('execution_date') | string -%}
  {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
    {{ exceptions.raise_compiler_error(
         "var('execution_date') must be a 'YYYY-MM-DD' string, got '" ~ value ~ "'") }}
  {%- endif -%}
  cast('{{ value }}' as date)
{%- endmacro %}
