{{/*
The transport (docs/transport.md): walbroker (the embedded broker StatefulSet) or an existing
Kafka cluster (transport=kafka, e.g. managed by Strimzi). With Kafka the chart deploys no broker;
streamer, collector and the admin Job get `--broker=kafka://…` and `--kafka-config` pointing at a
librdkafka properties file mounted from a ConfigMap the chart renders (no secret in it: secrets
are referenced as files mounted from your Secrets) or from a Secret you name (kafka.configSecret).
*/}}

{{- define "gputel.kafka" -}}
{{- if eq .Values.transport "kafka" }}true{{ end -}}
{{- end -}}

{{/* --broker of a broker client: the walbroker Service or kafka://<bootstrap servers>. */}}
{{- define "gputel.brokerUrl" -}}
{{- if include "gputel.kafka" . -}}
{{- printf "kafka://%s" (required "kafka.bootstrapServers is required with transport=kafka (host:port[,host:port…])" .Values.kafka.bootstrapServers) -}}
{{- else -}}
{{- include "gputel.brokerAddress" . -}}
{{- end -}}
{{- end -}}

{{- define "gputel.kafkaConfigName" -}}
{{- printf "%s-kafka-client" (include "gputel.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gputel.kafkaDir" -}}/var/run/gputel/kafka{{- end -}}

{{/* The client.properties the chart renders: kafka.properties, then SASL and TLS references. */}}
{{- define "gputel.kafkaProperties" -}}
{{- $k := .Values.kafka -}}
{{- $dir := include "gputel.kafkaDir" . -}}
{{- $props := dict -}}
{{- range $key, $value := $k.properties }}{{ $_ := set $props $key (toString $value) }}{{ end -}}
{{- if $k.tls.enabled -}}
{{- $_ := set $props "security.protocol" (ternary "SASL_SSL" "SSL" (not (empty $k.sasl.mechanism))) -}}
{{- if $k.tls.caSecret.name }}{{ $_ := set $props "ssl.ca.location" (printf "%s/ca/ca.crt" $dir) }}{{ end -}}
{{- if $k.tls.clientSecret.name -}}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/client/tls.crt" $dir) -}}
{{- $_ := set $props "ssl.key.location" (printf "%s/client/tls.key" $dir) -}}
{{- end -}}
{{- else if $k.sasl.mechanism -}}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" -}}
{{- end -}}
{{- if $k.sasl.mechanism -}}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism -}}
{{- $_ := set $props "sasl.username" (required "kafka.sasl.username is required with kafka.sasl.mechanism" $k.sasl.username) -}}
{{- $_ := set $props "sasl.password" (printf "${file:%s/sasl/password}" $dir) -}}
{{- end -}}
# rendered by the gputel chart (values kafka.*); secrets are files referenced with ${file:…}
{{- range $key := keys $props | sortAlpha }}
{{ $key }}={{ index $props $key }}
{{- end }}
{{- end -}}

{{/* Volumes with the Kafka client's files: the properties, and each Secret it references. */}}
{{- define "gputel.kafkaVolumes" -}}
{{- $k := .Values.kafka }}
- name: kafka-config
  {{- if $k.configSecret.name }}
  secret:
    secretName: {{ $k.configSecret.name }}
    defaultMode: 0400
    items:
      - {key: {{ $k.configSecret.key }}, path: client.properties}
  {{- else }}
  configMap:
    name: {{ include "gputel.kafkaConfigName" . }}
    items:
      - {key: client.properties, path: client.properties}
  {{- end }}
{{- if $k.sasl.mechanism }}
- name: kafka-sasl
  secret:
    secretName: {{ required "kafka.sasl.passwordSecret.name is required with kafka.sasl.mechanism" $k.sasl.passwordSecret.name }}
    defaultMode: 0400
    items:
      - {key: {{ $k.sasl.passwordSecret.key }}, path: password}
{{- end }}
{{- if and $k.tls.enabled $k.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecret.name }}
    defaultMode: 0444
    items:
      - {key: {{ $k.tls.caSecret.key }}, path: ca.crt}
{{- end }}
{{- if and $k.tls.enabled $k.tls.clientSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $k.tls.clientSecret.name }}
    defaultMode: 0400
    items:
      - {key: {{ $k.tls.clientSecret.certKey }}, path: tls.crt}
      - {key: {{ $k.tls.clientSecret.keyKey }}, path: tls.key}
{{- end }}
{{- end -}}

{{- define "gputel.kafkaMounts" -}}
{{- $k := .Values.kafka -}}
{{- $dir := include "gputel.kafkaDir" . }}
- name: kafka-config
  mountPath: {{ $dir }}/config
  readOnly: true
{{- if $k.sasl.mechanism }}
- name: kafka-sasl
  mountPath: {{ $dir }}/sasl
  readOnly: true
{{- end }}
{{- if and $k.tls.enabled $k.tls.caSecret.name }}
- name: kafka-ca
  mountPath: {{ $dir }}/ca
  readOnly: true
{{- end }}
{{- if and $k.tls.enabled $k.tls.clientSecret.name }}
- name: kafka-client
  mountPath: {{ $dir }}/client
  readOnly: true
{{- end }}
{{- end -}}

{{/* Flags a broker client adds for its transport (--kafka-config with Kafka, nothing else). */}}
{{- define "gputel.transportArgs" -}}
{{- if include "gputel.kafka" . -}}
{{- toYaml (list (printf "--kafka-config=%s/config/client.properties" (include "gputel.kafkaDir" .))) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* Whether `component` is a Kafka client here: (dict "root" $ "component" c). */}}
{{- define "gputel.kafkaClient" -}}
{{- if and (include "gputel.kafka" .root) (has .component (list "streamer" "collector" "admin")) }}true{{ end -}}
{{- end -}}

{{/* The components the chart runs, as a YAML list (no broker with transport=kafka). */}}
{{- define "gputel.components" -}}
{{- if include "gputel.kafka" . -}}
{{- toYaml (list "streamer" "collector" "gateway") -}}
{{- else -}}
{{- toYaml (list "broker" "streamer" "collector" "gateway") -}}
{{- end -}}
{{- end -}}
