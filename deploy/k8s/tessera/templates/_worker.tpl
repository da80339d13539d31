{{/*
A worker pod template (metadata and spec), shared by the worker StatefulSet and the
LeaderWorkerSet's leaderTemplate and workerTemplate.
Pass (dict "ctx" $ "role" "group|leader|rank"):
  group:  one pod holds a whole group (tp*pp ranks; tessera worker starts them with mpirun)
  leader, rank: one pod is one rank of a group spanning pods; LWS sets LWS_WORKER_INDEX (0 on
          the leader), LWS_GROUP_SIZE and LWS_LEADER_ADDRESS in every container. The ranks
          meet through etcd (tessera worker --group: the leader's address names the group)
*/}}
{{- define "tessera.workerPodTemplate" -}}
{{- $ := .ctx -}}
{{- $w := $.Values.workers -}}
{{- $port := int $w.port -}}
metadata:
  labels:
    {{- include "tessera.labels" (dict "ctx" $ "component" "worker") | nindent 4 }}
    tessera.io/worker-role: {{ .role }}
  {{- with $w.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ int $w.terminationGracePeriodSeconds }}
  {{- with $w.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: worker
      image: {{ include "tessera.image" $ }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      command: ["tessera"]
      args:
        - worker
        - --etcd
        - {{ include "tessera.etcdEndpoints" $ | quote }}
        - --model
        - {{ $.Values.model.path | quote }}
        - --host
        - "0.0.0.0"
        - --port
        - {{ $port | quote }}
        - --advertise-address
        - "$(POD_IP)"
        - --id
        - "$(POD_NAME)"
        - --tp
        - {{ int $.Values.tp | quote }}
        - --pp
        - {{ int $.Values.pp | quote }}
        - --device
        - {{ $.Values.device | quote }}
        - --drain-timeout
        - {{ int $w.drainTimeoutSeconds | quote }}
        {{- if ne .role "group" }}
        - --group
        - "$(LWS_LEADER_ADDRESS)"
        - --group-rank
        - "$(LWS_WORKER_INDEX)"
        - --group-size
        - "$(LWS_GROUP_SIZE)"
        {{- end }}
        {{- range $w.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- include "tessera.podEnv" $ | nindent 8 }}
        {{- with $w.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if ne .role "rank" }}
      {{- /* only rank 0 serves; the others follow its steps. A rank that dies or hangs fails its
      leader's next step (--step-timeout), the leader exits, and LWS recreates the group. */}}
      ports:
        - name: grpc
          containerPort: {{ $port }}
          protocol: TCP
      startupProbe:
        tcpSocket:
          port: grpc
        {{- toYaml $w.startupProbe | nindent 8 }}
      readinessProbe:
        grpc:
          port: {{ $port }}
        {{- toYaml $w.readinessProbe | nindent 8 }}
      livenessProbe:
        tcpSocket:
          port: grpc
        {{- toYaml $w.livenessProbe | nindent 8 }}
      {{- end }}
      {{- $res := include "tessera.workerResources" $ | fromYaml }}
      {{- with $res }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: dshm
          mountPath: /dev/shm
        {{- with include "tessera.modelMount" $ }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $w.shmSize }}
    {{- with include "tessera.modelVolume" $ }}
    {{- . | nindent 4 }}
    {{- end }}
  {{- with $w.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
