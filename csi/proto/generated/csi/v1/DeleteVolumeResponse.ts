// Original file: csi/proto/csi.proto


export interface DeleteVolumeResponse {
}

export interface DeleteVolumeResponse__Output {
}
